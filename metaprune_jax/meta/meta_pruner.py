"""The meta-pruner: task-conditioned hard-concrete gate logits from the support set.

Shared gates (``meta_params['gate_logits']``) learn one mask for every task. The
meta-pruner ``f`` maps a task's support set and the network's parameters to gate
logits *for that task*:

    e          = pool(mean_i phi(f_i))                  # [embed_dim], permutation invariant
    logit_l    = base_l + g * (row_l(e) [:, None] + col_l(e) [None, :]) + scale_l * zscore(log |w_l|)

for every gated kernel ``l`` of shape ``[..., in, out]``: ``base_l`` is the
shared logit tree (so shared gates are the special case ``f = 0``),
``row_l(e) = e @ R_l`` (``[in]``) and ``col_l(e) = e @ C_l`` (``[out]``) are a
rank-two, per-unit task modulation of every weight's logit, and the last term
feeds a per-layer parameter statistic (the standardised log-magnitude of each
weight, or of each unit's weight norm for structured gates) through a learned
per-layer scale. ``R``, ``C`` and ``scale`` start at zero, so an untrained
meta-pruner is exactly the shared-gate model. Generating a task's mask is one
forward pass of ``phi`` over the support set plus a few outer products.

``g`` (``modulation_gain``) is a fixed (not learned) multiplier of the task
modulation. Under Adam, whose steps are about ``lr`` in every parameter whatever
its gradient's size, a model ``g * R`` trained at ``lr`` is the model ``R``
trained at ``g * lr``: the gain is the modulation's own step size in logit units,
apart from ``phi``'s. With ``g = 1`` the modulation moves at the meta-pruner's
learning rate (1e-3), tens of times slower than the base logits (the gate
learning rate), and until hardening the per-task offsets stay far below the
spread of the base logits around the hardening threshold: every task keeps
nearly the same mask. A larger ``g`` helps only so far: it scales the part of
``e`` common to all tasks as much as the part that differs, and the common part
widens the shared logits (docs/notes/meta_pruner.md, session 12). ``g = 1`` is
the behaviour of runs saved before the gain existed.

Two task encoders (``embedding``, one of ``EMBEDDINGS``):

* ``'tanh'``: ``f_i`` is the example's raw features (the ``(x, y)`` pair, or the
  backbone's embedding of ``x_i``) and ``pool = tanh``. Un-normalised backbone
  features (Conv-4 embeddings of tens) drive ``tanh`` into saturation: ``e`` is
  numerically the same for every task and its gradient vanishes. Kept to
  reproduce runs saved before the choice existed.
* ``'normalized'`` (the default): a backbone embedding is layer-normalised per example before
  ``phi`` (its scale is the backbone's, not the task's, and drifts as the backbone
  trains); ``(x, y)`` pairs go in as they are (their location and scale are the
  task); ``pool = layer_norm`` over the embedding's entries, parameter-free (the
  modulation weights carry the scale and the base logits the offset). It is
  bounded (``|e_j| <= sqrt(embed_dim - 1)``) and scale-invariant, so it passes
  relative differences between tasks at any input scale and its gradient falls
  as ``1 / scale``, not exponentially.

Meta-pruner parameters are a dict ``{'phi': [(w, b), ...], 'layers': tree}``
where ``layers`` mirrors the gate-logit tree with ``None`` for ungated leaves
and ``{'row': [E, in] | None, 'col': [E, out], 'scale': []}`` for gated ones.
"""

from collections.abc import Callable
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from metaprune_jax import types
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import harden as harden_lib
from metaprune_jax.masks import sparsity
from metaprune_jax.meta import learner as learner_lib
from metaprune_jax.meta import gate_source


EMBEDDINGS = ('tanh', 'normalized')  # Task encoders (module docstring).
_LAYER_NORM_EPSILON = 1e-6


def _is_none(x) -> bool:
  return x is None


def _check_embedding(embedding: str) -> None:
  if embedding not in EMBEDDINGS:
    raise ValueError(f'unknown meta-pruner embedding {embedding!r}; use one of {EMBEDDINGS}.')


def layer_norm(x: jax.Array) -> jax.Array:
  """Parameter-free layer normalisation over the last axis: ``[..., d] -> [..., d]``, zero mean, unit variance."""
  centred = x - jnp.mean(x, axis=-1, keepdims=True)
  return centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + _LAYER_NORM_EPSILON)


def init_meta_pruner(key: types.PRNGKey, params: types.Params, gate_logits: types.GateLogits, *,
                     feature_dim: int, hidden_sizes: Sequence[int] = (64, 64), embed_dim: int = 32) -> dict:
  """Meta-pruner parameters for gates shaped like ``gate_logits``.

  Args:
    key: PRNG key for the embedding network.
    params: the network's parameters (for kernel shapes).
    gate_logits: the shared gate-logit tree (``'weight'`` or ``'out_unit'`` /
      ``'in_unit'`` leaves; ``None`` for ungated leaves).
    feature_dim: width of one support example's feature vector.
    hidden_sizes: hidden widths of ``phi``.
    embed_dim: width of the task embedding ``e``.
  """
  sizes = (feature_dim, *hidden_sizes, embed_dim)
  keys = jax.random.split(key, len(sizes) - 1)
  phi = [(jax.random.normal(k, (n_in, n_out), jnp.float32) * (2.0 / n_in) ** 0.5, jnp.zeros((n_out,), jnp.float32))
         for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:])]

  def layer(logits, param):
    if logits is None:
      return None
    kernel_in, kernel_out = (param.shape[-2] if param.ndim >= 2 else 1), param.shape[-1]
    gates_rows = param.ndim >= 2 and logits.ndim >= 2 and logits.shape[-2] == kernel_in
    gates_cols = logits.shape[-1] == kernel_out
    return {'row': jnp.zeros((embed_dim, kernel_in), jnp.float32) if gates_rows else None,
            'col': jnp.zeros((embed_dim, kernel_out), jnp.float32) if gates_cols else None,
            'scale': jnp.zeros((), jnp.float32)}
  layers = jax.tree.map(layer, gate_logits, params, is_leaf=_is_none)
  return {'phi': phi, 'layers': layers}


def task_embedding(pruner_params: dict, features: jax.Array, *, embedding: str = 'normalized') -> jax.Array:
  """The task embedding ``e = pool(mean_i phi(features_i))``: ``features [n, feature_dim] -> [embed_dim]``.

  Order-free over the ``n`` examples, and bounded: ``'tanh'`` keeps every entry
  in (-1, 1), ``'normalized'`` (a parameter-free layer norm of the pooled vector)
  within ``sqrt(embed_dim - 1)``, so a modulation weight moves a logit by a
  bounded multiple of its own size: the logits cannot run away from the
  sparsity controller. Only ``'normalized'`` stays responsive at large feature
  scales (module docstring).

  Args:
    pruner_params: from ``init_meta_pruner``.
    features: ``[n, feature_dim]`` support-set features of one task.
    embedding: ``'tanh'`` or ``'normalized'`` (``EMBEDDINGS``).
  """
  _check_embedding(embedding)
  h = features
  phi = pruner_params['phi']
  for i, (w, b) in enumerate(phi):
    h = h @ w + b
    if i < len(phi) - 1:
      h = jax.nn.relu(h)
  pooled = jnp.mean(h, axis=0)
  return jnp.tanh(pooled) if embedding == 'tanh' else layer_norm(pooled)


def _standardised_log_magnitude(param: jax.Array, logits: jax.Array) -> jax.Array:
  """``zscore(log |w|)`` reduced to the gate's shape (unit gates use the unit's weight norm)."""
  magnitude = jnp.abs(param)
  if logits.shape != param.shape:  # Structured gate: the norm of the weights it switches.
    padded = (1,) * (param.ndim - logits.ndim) + tuple(logits.shape)
    axes = tuple(i for i, (g, p) in enumerate(zip(padded, param.shape)) if g == 1 and p != 1)
    magnitude = jnp.sqrt(jnp.sum(param * param, axis=axes, keepdims=True)).reshape(logits.shape)
  log_magnitude = jnp.log(magnitude + 1e-8)
  return (log_magnitude - jnp.mean(log_magnitude)) / (jnp.std(log_magnitude) + 1e-6)


def task_gate_logits(pruner_params: dict, gate_logits: types.GateLogits, params: types.Params,
                     features: jax.Array, *, embedding: str = 'normalized',
                     modulation_gain: float = 1.0) -> types.GateLogits:
  """This task's gate logits (same tree and shapes as ``gate_logits``).

  Args:
    pruner_params: from ``init_meta_pruner``.
    gate_logits: the shared (base) logits.
    params: the network's meta-parameters (their magnitudes are an input; no
      gradient flows back into the weights through this statistic).
    features: ``[n, feature_dim]`` support-set features of one task.
    embedding: the task encoder (``task_embedding``).
    modulation_gain: the fixed multiplier ``g`` of the task modulation (module docstring).
  """
  e = modulation_gain * task_embedding(pruner_params, features, embedding=embedding)

  def leaf(base, layer, param):
    if base is None:
      return None
    logits = base + layer['scale'] * _standardised_log_magnitude(jax.lax.stop_gradient(param), base)
    if layer['col'] is not None:
      logits = logits + (e @ layer['col'])
    if layer['row'] is not None:
      logits = logits + (e @ layer['row'])[:, None]
    return logits
  return jax.tree.map(leaf, gate_logits, pruner_params['layers'], params, is_leaf=_is_none)


def regression_features(support_inputs: jax.Array, support_targets: jax.Array) -> jax.Array:
  """Support features of a regression task: the ``(x, y)`` pairs, ``[n, in + out]``."""
  return jnp.concatenate([support_inputs.reshape(support_inputs.shape[0], -1),
                          support_targets.reshape(support_targets.shape[0], -1)], axis=-1)


def pairwise_mask_distances(masks: Sequence[types.Masks]) -> dict[str, jax.Array]:
  """Jaccard and Hamming distance matrices ``[n, n]`` between the binary masks of ``n`` tasks.

  Jaccard: 1 - |A and B| / |A or B| over the kept gates; Hamming: the fraction
  of gates that differ. ``None`` leaves are ignored.
  """
  flat = jnp.stack([jnp.concatenate([jnp.ravel(m != 0) for m in jax.tree.leaves(tree)]) for tree in masks])
  flat = flat.astype(jnp.float32)
  both = flat @ flat.T
  either = flat.sum(1)[:, None] + flat.sum(1)[None, :] - both
  differ = either - both
  return {'jaccard': jnp.where(either > 0, differ / jnp.maximum(either, 1.0), 0.0),
          'hamming': differ / flat.shape[1]}


def mask_distances(masks: Sequence[types.Masks]) -> dict[str, jax.Array]:
  """Mean pairwise Jaccard and Hamming distances over task pairs (``pairwise_mask_distances``)."""
  matrices = pairwise_mask_distances(masks)
  n = len(masks)
  off_diagonal = 1.0 - jnp.eye(n)
  pairs = jnp.maximum(off_diagonal.sum(), 1.0)
  return {name: jnp.sum(m * off_diagonal) / pairs for name, m in matrices.items()}


def task_features_fn(embed_fn=None, *, embedding: str = 'normalized'):
  """``(params, task) -> [n, feature_dim]``: the backbone's support embeddings, else the ``(x, y)`` pairs.

  Embeddings are computed with the current (unmasked) meta-parameters and
  treated as constants: the meta-pruner reads them but does not train the
  backbone. With ``embedding='normalized'`` each example's backbone embedding is
  layer-normalised (``layer_norm``); the ``(x, y)`` pairs are never normalised.
  """
  _check_embedding(embedding)
  if embed_fn is None:
    return lambda params, task: regression_features(task.support_inputs, task.support_targets)
  if embedding == 'normalized':
    return lambda params, task: layer_norm(jax.lax.stop_gradient(embed_fn(params, task.support_inputs)))
  return lambda params, task: jax.lax.stop_gradient(embed_fn(params, task.support_inputs))


def meta_pruner_gates(features_fn: Callable, hc: hard_concrete.HardConcrete = hard_concrete.HardConcrete(), *,
                      target_sparsity: float | None = None,
                      expand_units: Callable | None = None, embedding: str = 'normalized',
                      modulation_gain: float = 1.0) -> gate_source.GateSource:
  """Task-conditioned gates: every task runs with ``task_gate_logits`` of its own support set.

  Meta-parameters gain a ``'meta_pruner'`` group (``init_meta_pruner``);
  ``'gate_logits'`` holds the shared base logits. Per task, the bound learner
  sees ``gate_logits = task_gate_logits(...)`` and otherwise runs unchanged (its
  gate noise, inner loop and outer loss). With ``target_sparsity`` set, each
  task's logits are hardened to exactly that sparsity (``masks.harden``, the
  task's own lowest logits pruned) at evaluation (``gate_mode='deterministic'``)
  and, during training, in the learner bound with ``hardened=True``.

  Args:
    features_fn: ``(params, task) -> [n, feature_dim]`` (``task_features_fn``).
    hc: hard-concrete constants.
    target_sparsity: the requested sparsity, or None (no hardening).
    expand_units: the net's hidden-unit coupling (``masks.sparsity``), or None.
    embedding: the task encoder (``task_embedding``); ``features_fn`` should be
      built with the same one.
    modulation_gain: the fixed multiplier of the task modulation (module docstring).

  Returns:
    A ``GateSource`` whose ``expected_density`` is the mean over tasks of each
    task's expected density (a constant once hardened).
  """
  def with_task_gates(meta_params, task, gate_mode, hardened):
    params = meta_params['params']
    logits = task_gate_logits(meta_params['meta_pruner'], meta_params['gate_logits'], params,
                              features_fn(params, task), embedding=embedding, modulation_gain=modulation_gain)
    if target_sparsity is not None and (gate_mode == 'deterministic' or hardened):
      logits = harden_lib.harden(params, jax.lax.stop_gradient(logits), target_sparsity, expand_units=expand_units)
    return {**meta_params, 'gate_logits': logits}

  def bind(learner, hardened: bool):
    def task_loss(meta_params, task, noise, *, settings, gate_mode='sample', fixed_masks=None):
      if gate_mode != 'off':
        meta_params = with_task_gates(meta_params, task, gate_mode, hardened)
      return learner.task_loss(meta_params, task, noise, settings=settings, gate_mode=gate_mode,
                               fixed_masks=fixed_masks)

    def task_traces(meta_params, task, *, settings, gate_mode='deterministic', fixed_masks=None):
      if gate_mode != 'off':
        meta_params = with_task_gates(meta_params, task, gate_mode, hardened)
      return learner.task_traces(meta_params, task, settings=settings, gate_mode=gate_mode,
                                 fixed_masks=fixed_masks)

    return learner._replace(name=f'{learner.name}+meta_pruner', task_loss=task_loss,
                            batch_loss=learner_lib.batch_mean(task_loss, learner.execution), task_traces=task_traces)

  def expected_density(meta_params, tasks, hardened: bool):
    if hardened and target_sparsity is not None:
      return gate_source.hardened_density(target_sparsity)
    def one(task):
      logits = with_task_gates(meta_params, task, 'sample', False)['gate_logits']
      return sparsity.expected_density(meta_params['params'], logits, hc, expand_units=expand_units)
    return jnp.mean(jax.vmap(one)(tasks))

  return gate_source.GateSource('meta_pruner', ('gate_logits', 'meta_pruner'), bind, expected_density,
                                lambda meta_params: meta_params, hardens_per_task=target_sparsity is not None)


def task_masks(meta_params, tasks, features_fn, *, target_sparsity: float | None,
               hc: hard_concrete.HardConcrete = hard_concrete.HardConcrete(), expand_units: Callable | None = None,
               embedding: str = 'normalized', modulation_gain: float = 1.0):
  """Deterministic (hardened to ``target_sparsity`` when given) masks of a task batch: leaves ``[T, ...]``."""
  params = meta_params['params']

  def one(task):
    logits = task_gate_logits(meta_params['meta_pruner'], meta_params['gate_logits'], params,
                              features_fn(params, task), embedding=embedding, modulation_gain=modulation_gain)
    if target_sparsity is not None:
      logits = harden_lib.harden(params, logits, target_sparsity, expand_units=expand_units)
    return hard_concrete.deterministic_gates(logits, hc)
  return jax.vmap(one)(tasks)
