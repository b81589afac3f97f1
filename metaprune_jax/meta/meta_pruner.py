"""The meta-pruner: task-conditioned hard-concrete gate logits from the support set.

Shared gates (``meta_params['gate_logits']``) learn one mask for every task. The
meta-pruner ``f`` maps a task's support set and the network's parameters to gate
logits *for that task*:

    e          = mean_i  phi([features(x_i), targets(y_i)])      # [embed_dim], permutation invariant
    logit_l    = base_l + row_l(e) [:, None] + col_l(e) [None, :] + scale_l * zscore(log |w_l|)

for every gated kernel ``l`` of shape ``[..., in, out]``: ``base_l`` is the
shared logit tree (so shared gates are the special case ``f = 0``),
``row_l(e) = e @ R_l`` (``[in]``) and ``col_l(e) = e @ C_l`` (``[out]``) are a
rank-two, per-unit task modulation of every weight's logit, and the last term
feeds a per-layer parameter statistic (the standardised log-magnitude of each
weight, or of each unit's weight norm for structured gates) through a learned
per-layer scale. ``R``, ``C`` and ``scale`` start at zero, so an untrained
meta-pruner is exactly the shared-gate model. Generating a task's mask is one
forward pass of ``phi`` over the support set plus a few outer products.

Meta-pruner parameters are a dict ``{'phi': [(w, b), ...], 'layers': tree}``
where ``layers`` mirrors the gate-logit tree with ``None`` for ungated leaves
and ``{'row': [E, in] | None, 'col': [E, out], 'scale': []}`` for gated ones.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from metaprune_jax import types


def _is_none(x) -> bool:
  return x is None


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
    kernel_in, kernel_out = param.shape[-2], param.shape[-1]
    gates_rows = logits.ndim >= 2 and logits.shape[-2] == kernel_in
    gates_cols = logits.shape[-1] == kernel_out
    return {'row': jnp.zeros((embed_dim, kernel_in), jnp.float32) if gates_rows else None,
            'col': jnp.zeros((embed_dim, kernel_out), jnp.float32) if gates_cols else None,
            'scale': jnp.zeros((), jnp.float32)}
  layers = jax.tree.map(layer, gate_logits, params, is_leaf=_is_none)
  return {'phi': phi, 'layers': layers}


def task_embedding(pruner_params: dict, features: jax.Array) -> jax.Array:
  """``e = mean_i phi(features_i)``: ``features [n, feature_dim] -> [embed_dim]`` (order-free)."""
  h = features
  phi = pruner_params['phi']
  for i, (w, b) in enumerate(phi):
    h = h @ w + b
    if i < len(phi) - 1:
      h = jax.nn.relu(h)
  return jnp.mean(h, axis=0)


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
                     features: jax.Array) -> types.GateLogits:
  """This task's gate logits (same tree and shapes as ``gate_logits``).

  Args:
    pruner_params: from ``init_meta_pruner``.
    gate_logits: the shared (base) logits.
    params: the network's meta-parameters (their magnitudes are an input; no
      gradient flows back into the weights through this statistic).
    features: ``[n, feature_dim]`` support-set features of one task.
  """
  e = task_embedding(pruner_params, features)

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


def mask_distances(masks: Sequence[types.Masks]) -> dict[str, jax.Array]:
  """Mean pairwise Jaccard and Hamming distances between binary masks of several tasks.

  Args:
    masks: one deterministic mask tree per task (``None`` leaves ignored).

  Returns:
    ``{'jaccard': scalar, 'hamming': scalar}``: Jaccard distance of the kept
    sets (1 - |A and B| / |A or B|) and the fraction of gates that differ,
    averaged over task pairs.
  """
  flat = jnp.stack([jnp.concatenate([jnp.ravel(m != 0) for m in jax.tree.leaves(tree)]) for tree in masks])
  flat = flat.astype(jnp.float32)
  both = flat @ flat.T
  either = flat.sum(1)[:, None] + flat.sum(1)[None, :] - both
  differ = either - both
  n = flat.shape[0]
  off_diagonal = 1.0 - jnp.eye(n)
  pairs = jnp.maximum(off_diagonal.sum(), 1.0)
  jaccard = jnp.where(either > 0, differ / jnp.maximum(either, 1.0), 0.0)
  return {'jaccard': jnp.sum(jaccard * off_diagonal) / pairs,
          'hamming': jnp.sum(differ / flat.shape[1] * off_diagonal) / pairs}
