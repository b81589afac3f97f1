"""``export_compact`` / ``load_compact``: a pruned model as a smaller folder, and the pure model it loads into.

A model spec (a JSON-able dict) says what the arrays are and how the learner
uses them::

  {'arch': 'mlp' | 'conv4' | 'lstm' | 'gru',
   'activation': 'relu',            # mlp
   'image_size': 28,                # conv4
   'last_only': True, 'expand_output': False,   # lstm / gru (sequence forecasting adds a trailing axis)
   'learner': 'maml' | 'fomaml' | 'anil' | 'meta_sgd' | 'reptile' | 'protonet',
   'loss': 'mse' | 'cross_entropy',
   'inner_lr': 0.01, 'num_inner_steps': 10, 'adapt_keys': None | ['head'],
   'conv_method': 'conv',            # optional: 'patches' where per-task adapted weights run under vmap
   'bn_mode': 'transductive'}        # optional, conv4: or 'inductive' (below)

``load_compact(DIR)`` returns an ``ExportedModel`` whose ``apply(params,
inputs)`` is the network (a prototypical network's is the embedding) and whose
``predict(support_inputs, support_targets, query_inputs)`` is the learner's
few-shot prediction: prototype logits, or the network after
``num_inner_steps`` SGD steps on the support set (only the ``adapt_keys``
subtrees for ANIL; per-parameter rates for Meta-SGD), in float32, each step
multiplied by the stored pruning pattern so pruned weights stay zero as in the
masked model. With ``bn_mode='inductive'`` (a conv4 spec) ``predict`` runs
every batch norm over the query images with the support set's statistics (the
query images' own with ``'transductive'``, the default), as the training code's
learners do (``nets.conv``); ``apply`` always normalises the batch it is given,
unless passed ``reference=``. Nothing here reads the training code's gates or masks.
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metaprune_jax.export import artifact
from metaprune_jax.export import compact_conv
from metaprune_jax.export import compact_mlp
from metaprune_jax.export import compact_rnn
from metaprune_jax.export import forward
from metaprune_jax.export.compacted import Compacted
from metaprune_jax.meta import inner
from metaprune_jax.meta import protonet
from metaprune_jax.nets import conv
from metaprune_jax.nets import rnn

ARCHS = ('mlp', 'conv4', 'lstm', 'gru')
LOSSES = ('mse', 'cross_entropy')


class ExportedModel(NamedTuple):
  """A loaded export.

  Attributes:
    spec: the model spec (module docstring).
    params: compact float32 params (int8 exports dequantized).
    masks: ``{0, 1}`` patterns of the leaves that still hold pruned weights (None: dense leaf).
    inner_lrs: Meta-SGD's per-parameter inner learning rates (compact), or None.
    metadata: the whole ``export.json``.
    apply: ``(params, inputs) -> outputs`` (jitted).
    predict: ``(support_inputs, support_targets, query_inputs) -> query outputs`` of the learner (jitted).
  """
  spec: dict
  params: dict
  masks: dict
  inner_lrs: dict | None
  metadata: dict
  apply: Callable
  predict: Callable


def check_spec(spec: dict) -> None:
  """Raises ``ValueError`` naming the first field of ``spec`` that cannot be exported."""
  if spec.get('arch') not in ARCHS:
    raise ValueError(f"model spec arch={spec.get('arch')!r} is unknown; use one of {ARCHS}.")
  if spec.get('loss') not in LOSSES:
    raise ValueError(f"model spec loss={spec.get('loss')!r} is unknown; use one of {LOSSES}.")
  if spec['arch'] == 'conv4' and not spec.get('image_size'):
    raise ValueError('a conv4 model spec needs image_size (the border tables depend on it).')
  if bn_mode(spec) not in conv.BN_MODES:
    raise ValueError(f'model spec bn_mode={bn_mode(spec)!r} is unknown; use one of {conv.BN_MODES}.')
  if bn_mode(spec) == 'inductive' and spec['arch'] != 'conv4':
    raise ValueError(f"model spec bn_mode='inductive' needs batch norm (arch 'conv4'), not {spec['arch']!r}.")


def bn_mode(spec: dict) -> str:
  """How ``predict`` normalises the query images: ``'transductive'`` (the default) or ``'inductive'``."""
  return spec.get('bn_mode', 'transductive')


def adapts(spec: dict) -> bool:
  """Whether the learner changes weights on the support set (everything but prototypical networks)."""
  return spec['learner'] != 'protonet'


def compact(spec: dict, params, masks) -> Compacted:
  """Structured removal for ``spec['arch']`` (``compact_mlp`` / ``compact_conv`` / ``compact_rnn``)."""
  check_spec(spec)
  params = jax.tree.map(np.asarray, params)
  masks = None if masks is None else jax.tree.map(np.asarray, masks)
  if spec['arch'] == 'mlp':
    return compact_mlp.compact_mlp(params, masks, activation=spec.get('activation', 'relu'), adapts=adapts(spec))
  if spec['arch'] == 'conv4':
    return compact_conv.compact_conv4(params, masks, image_size=int(spec['image_size']), adapts=adapts(spec),
                                      embedding_only=not adapts(spec))
  return compact_rnn.compact_rnn(params, masks, cell=spec['arch'], fold_unit_scale=not adapts(spec))


def take_units(spec: dict, tree, kept_units: dict):
  """A params-shaped tree (Meta-SGD's inner learning rates) cut to the units ``compact`` kept."""
  tree = jax.tree.map(np.asarray, tree)
  if spec['arch'] == 'mlp':
    names = sorted(kept_units, key=lambda n: int(n.split('_')[1]))
    sizes = [np.asarray(tree[n]['kernel']).shape[1] for n in names]
    return compact_mlp.take_neurons(tree, [np.isin(np.arange(s), kept_units[n]) for n, s in zip(names, sizes)])
  if spec['arch'] == 'conv4':
    return compact_conv.take_channels(tree, kept_units, embedding_only=not adapts(spec))
  return compact_rnn.take_hidden_units(tree, kept_units['hidden'])


def apply_fn(spec: dict) -> Callable:
  """``(params, inputs) -> outputs`` of the compact network named by ``spec``."""
  check_spec(spec)
  arch = spec['arch']
  if arch == 'mlp':
    return functools.partial(forward.mlp_apply, activation=spec.get('activation', 'relu'))
  if arch == 'conv4':
    net = forward.conv4_apply if adapts(spec) else forward.conv4_features
    return functools.partial(net, method=spec.get('conv_method', 'conv'))

  def rnn_apply(params, inputs):
    out = rnn.rnn_apply(params, inputs, cell=arch, last_only=bool(spec.get('last_only', True)))
    return out[..., None] if spec.get('expand_output') else out
  return rnn_apply


def loss_fn(spec: dict, apply: Callable) -> Callable:
  """``(params, inputs, targets) -> scalar`` support loss of the learner."""
  if spec['loss'] == 'mse':
    return lambda params, x, y: jnp.mean((apply(params, x) - y) ** 2)
  return lambda params, x, y: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y))


def predict_fn(spec: dict, params, masks, inner_lrs=None) -> Callable:
  """``(support_inputs, support_targets, query_inputs) -> query outputs`` of the learner (module docstring)."""
  apply = apply_fn(spec)
  inductive = bn_mode(spec) == 'inductive'

  def apply_to_query(query_params, support_inputs, query_inputs):
    if inductive:  # Batch-norm statistics of the support set.
      return apply(query_params, query_inputs, reference=support_inputs)
    return apply(query_params, query_inputs)

  if not adapts(spec):
    def prototypes(support_inputs, support_targets, query_inputs):
      return protonet.prototype_logits(apply(params, support_inputs), support_targets,
                                       apply_to_query(params, support_inputs, query_inputs))
    return jax.jit(prototypes)
  loss = loss_fn(spec, apply)
  keys = spec.get('adapt_keys') or list(params)
  lr_tree = inner_lrs if inner_lrs is not None else jax.tree.map(lambda _: float(spec['inner_lr']), params)
  # The masked model adapts w = params * m with step inner_lr * m**2; m is 0/1 here.
  step = {}
  for k in keys:
    leaf_masks = (masks or {}).get(k)
    step[k] = lr_tree[k] if leaf_masks is None else jax.tree.map(
        lambda lr, m: lr if m is None else lr * m, lr_tree[k], leaf_masks, is_leaf=lambda x: x is None)

  def adapted(support_inputs, support_targets, query_inputs):
    def support_loss(fast):
      return loss({**params, **fast}, support_inputs, support_targets)
    fast = inner.adapt(support_loss, {k: params[k] for k in keys}, inner_lr=step,
                       num_inner_steps=int(spec['num_inner_steps']))
    return apply_to_query({**params, **fast}, support_inputs, query_inputs)
  return jax.jit(adapted)


def export_compact(out_dir: str, spec: dict, params, masks, *, quantization: str = 'none', inner_lrs=None,
                   report: dict | None = None) -> dict:
  """Compacts a pruned model and writes it (``artifact``) to ``out_dir``.

  Args:
    out_dir: the export folder (created).
    spec: model spec (module docstring).
    params: the trained params (full size).
    masks: deterministic gate values mirroring ``params`` (None leaves: dense).
    quantization: ``'none'`` or ``'int8'`` (per-output-channel symmetric kernels).
    inner_lrs: Meta-SGD's per-parameter inner learning rates (full size), or None.
    report: extra JSON-able fields for ``export.json`` (source run, diffs, ...).

  Returns:
    The ``export.json`` dict (``artifact_bytes``, ``dense_bytes``, ``layer_shapes``, ...).
  """
  if quantization not in artifact.QUANTIZATIONS:
    raise ValueError(f'--quantize={quantization!r} is unknown; use one of {artifact.QUANTIZATIONS}.')
  compacted = compact(spec, params, masks)
  trees = {'params': (compacted.params, compacted.masks)}
  if inner_lrs is not None:
    trees['inner_lrs'] = (take_units(spec, inner_lrs, compacted.kept_units), None)
  shapes = lambda tree: {k: list(np.shape(v)) for k, v in artifact.flatten(tree).items()}  # pylint: disable=unnecessary-lambda-assignment
  total = int(sum(np.size(v) for v in jax.tree.leaves(params)))
  compact_total = int(sum(np.size(v) for v in jax.tree.leaves(compacted.params)))
  pruned = int(sum(np.size(m) - np.count_nonzero(m) for m in artifact.flatten(compacted.masks).values()))
  metadata = {
      'spec': spec,
      'dense_bytes': 4 * total,
      'total_params': total,
      'compact_params': compact_total,
      'nonzero_params': compact_total - pruned,
      'layer_shapes': {'before': shapes(jax.tree.map(np.asarray, params)), 'after': shapes(compacted.params)},
      'kept_units': {k: [int(i) for i in v] for k, v in compacted.kept_units.items()},
      **(report or {}),
  }
  return artifact.write(out_dir, trees, metadata, quantization=quantization)


def load_compact(export_dir: str) -> ExportedModel:
  """Loads an export folder into an ``ExportedModel`` (``apply`` and ``predict`` jitted).

  Raises:
    ValueError: ``export_dir`` is not an export folder, or it is damaged (the message names it).
  """
  document, trees = artifact.read(export_dir)
  spec = document['spec']
  check_spec(spec)
  params, masks = trees['params']
  params = jax.tree.map(jnp.asarray, params)
  masks = jax.tree.map(lambda m: None if m is None else jnp.asarray(m), masks, is_leaf=lambda x: x is None)
  inner_lrs = jax.tree.map(jnp.asarray, trees['inner_lrs'][0]) if 'inner_lrs' in trees else None
  return ExportedModel(spec, params, masks, inner_lrs, document, jax.jit(apply_fn(spec)),
                       predict_fn(spec, params, masks, inner_lrs))
