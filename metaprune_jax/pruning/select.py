"""Scores -> masks: top-k (global / layer-wise, uniform / ERK, given per-layer counts) and structured (whole units).

Inputs are score trees from ``metaprune_jax.pruning.criteria`` (mirroring
``params``, ``None`` at leaves that stay dense). Outputs are mask trees that
mirror ``params``: ``None`` for dense leaves and float32 0/1 arrays of the
leaf's full shape otherwise, ready for ``metaprune_jax.masks.masking.apply_masks``
(``metaprune_jax.masks.sparsity.mask_sparsity`` and ``nonzero_count`` count them).

Exactness and rounding. Over a pool of ``n`` scored entries, exactly
``num_pruned = floor(sparsity * n + 0.5)`` (round half up) entries get mask 0.
The lowest scores are pruned; ties are broken by position (the entry that
comes first in tree-flatten order, then row-major order inside a leaf, is
pruned first), so e.g. all-equal scores still give the exact count. Note that
``sparsity`` close to 1 on a small pool can round up to pruning all of it.

``sparsity`` is normally a Python float, validated to lie in ``[0, 1)``, and is
static under ``jax.jit``. ``topk_masks`` (uniform distribution) and
``unit_masks`` also accept a traced scalar, e.g. a schedule's output inside a
jitted train step, so that changing sparsity does not recompile; a traced value
cannot be validated: it is clipped to ``[0, 1]`` and rounded in float32.
"""

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from metaprune_jax import types

ScoreTree = Any

SCOPES = ('global', 'layerwise')
DISTRIBUTIONS = ('uniform', 'erk')


def _is_none(x) -> bool:
  return x is None


def _flatten(tree):
  """Flattens keeping ``None`` leaves, so the positions mirror ``params``."""
  return jax.tree.flatten(tree, is_leaf=_is_none)


def _is_traced(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def _check_sparsity(sparsity, name: str = 'sparsity'):
  """Validates a concrete sparsity in [0, 1); returns float or the tracer."""
  if _is_traced(sparsity):
    return sparsity
  try:
    value = float(sparsity)
  except (TypeError, ValueError) as e:
    raise ValueError(f'{name} must be a number in [0, 1), got {sparsity!r}.') from e
  if not 0.0 <= value < 1.0:  # Also rejects NaN.
    raise ValueError(
        f'{name} must be in [0, 1) (the fraction of weights set to zero), got '
        f'{value}. Use e.g. {name}=0.9 to keep 10% of the weights.')
  return value


def _check_choice(value, name: str, valid: Sequence[str]) -> None:
  if value not in valid:
    raise ValueError(f'{name} must be one of {list(valid)}, got {value!r}.')


def _num_pruned(sparsity, n: int):
  """``floor(sparsity * n + 0.5)``: Python int if static, int32 if traced."""
  if _is_traced(sparsity):
    s = jnp.clip(jnp.asarray(sparsity, jnp.float32), 0.0, 1.0)
    return jnp.clip(jnp.floor(s * n + 0.5), 0, n).astype(jnp.int32)
  return min(int(math.floor(sparsity * n + 0.5)), n)


@jax.jit
def _keep_flat(flat: jax.Array, num_pruned) -> jax.Array:
  """0/1 float32 mask over ``flat [n]`` zeroing the ``num_pruned`` lowest scores.

  Ranks come from a stable ascending sort, so equal scores are ordered by
  index and the count of zeros is exact. ``num_pruned`` is a dynamic argument
  (int or traced), so one compilation per ``n`` serves every sparsity.
  """
  n = flat.shape[0]
  order = jnp.argsort(flat, stable=True)
  ranks = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
  return (ranks >= num_pruned).astype(jnp.float32)


def _topk_leaves(leaves: list, sparsity) -> list:
  """Global top-k over a list of score arrays; returns masks of the same shapes."""
  flat = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])
  keep = _keep_flat(flat, _num_pruned(sparsity, flat.shape[0]))
  out, start = [], 0
  for x in leaves:
    out.append(jnp.reshape(keep[start:start + x.size], x.shape))
    start += x.size
  return out


def erk_densities(scores: ScoreTree, sparsity: float, *,
                  power_scale: float = 1.0) -> Any:
  """Per-layer densities of the Erdos-Renyi-Kernel distribution (Evci et al. 2020).

  Each layer ``l`` with shape ``(d_1, ..., d_k)`` (all dims, including conv
  kernel sizes) and ``n_l = prod(d)`` entries gets density
  ``eps * (sum(d) / prod(d)) ** power_scale``, with one ``eps`` chosen so that
  ``sum_l density_l * n_l = (1 - sparsity) * sum_l n_l``. Layers whose density
  would exceed 1 are made dense and ``eps`` is recomputed for the rest until no
  layer exceeds 1 (small layers stay denser than big ones).

  Args:
    scores: tree whose non-``None`` leaves are the pruned layers (anything with
      a ``.shape``: a score tree, or params filtered by a prunable tree).
    sparsity: overall target sparsity in ``[0, 1)``; must be static.
    power_scale: exponent on the raw ERK ratio (1.0 is ERK; 0.0 is uniform).

  Returns:
    A tree mirroring ``scores`` with a Python float density in ``(0, 1]`` at
    each non-``None`` leaf.

  Raises:
    ValueError: if ``sparsity`` is outside ``[0, 1)`` or traced.
  """
  if _is_traced(sparsity):
    raise ValueError('sparsity must be a static Python float for the ERK '
                     "distribution; mark it static or use distribution='uniform'.")
  sparsity = _check_sparsity(sparsity)
  leaves, treedef = _flatten(scores)
  idx = [i for i, x in enumerate(leaves) if x is not None]
  sizes = {i: math.prod(leaves[i].shape) for i in idx}
  raw = {i: (sum(leaves[i].shape) / sizes[i]) ** power_scale for i in idx}
  budget = (1.0 - sparsity) * sum(sizes.values())
  dense: set[int] = set()
  eps = 0.0
  while True:
    rest = [i for i in idx if i not in dense]
    if not rest:
      break
    eps = (budget - sum(sizes[i] for i in dense)) / sum(raw[i] * sizes[i] for i in rest)
    over = [i for i in rest if eps * raw[i] > 1.0]
    if not over:
      break
    # Capping a layer at 1 frees budget, so eps only grows: cap all at once.
    dense.update(over)
  out = [None] * len(leaves)
  for i in idx:
    out[i] = 1.0 if i in dense else eps * raw[i]
  return jax.tree.unflatten(treedef, out)


def layer_sparsities(scores: ScoreTree, sparsity, distribution: str = 'uniform') -> Any:
  """Per-layer target sparsities: ``sparsity`` everywhere, or ``1 - ERK density``.

  Args:
    scores: tree whose non-``None`` leaves are the pruned layers.
    sparsity: overall target in ``[0, 1)`` (may be traced for 'uniform').
    distribution: 'uniform' or 'erk'.

  Returns:
    Tree mirroring ``scores`` with a sparsity at each non-``None`` leaf.
  """
  _check_choice(distribution, 'distribution', DISTRIBUTIONS)
  sparsity = _check_sparsity(sparsity)
  if distribution == 'erk':
    return jax.tree.map(lambda d: None if d is None else 1.0 - d,
                        erk_densities(scores, sparsity), is_leaf=_is_none)
  return jax.tree.map(lambda x: None if x is None else sparsity, scores,
                      is_leaf=_is_none)


def topk_masks(scores: ScoreTree, sparsity, *, scope: str = 'global',
               distribution: str = 'uniform') -> types.Masks:
  """Unstructured masks keeping the highest scores, with exact sparsity.

  Args:
    scores: score tree (``None`` where not pruned); leaves of any shape.
    sparsity: fraction of scored entries to zero, in ``[0, 1)``.
    scope: 'global' ranks all scored entries together (layers with small
      scores lose more); 'layerwise' prunes each leaf to its own sparsity.
    distribution: per-layer sparsities for ``scope='layerwise'``: 'uniform'
      (every layer at ``sparsity``) or 'erk' (``erk_densities``; the total is
      then exact up to per-layer rounding). 'erk' requires 'layerwise'.

  Returns:
    Mask tree mirroring ``scores``: float32 0/1 arrays of each leaf's shape,
    ``None`` where ``scores`` is ``None``. Global: exactly
    ``floor(sparsity * n + 0.5)`` zeros over all ``n`` scored entries;
    layerwise: that count per leaf with the leaf's own sparsity.

  Raises:
    ValueError: bad ``sparsity``, ``scope`` or ``distribution``.
  """
  _check_choice(scope, 'scope', SCOPES)
  _check_choice(distribution, 'distribution', DISTRIBUTIONS)
  sparsity = _check_sparsity(sparsity)
  if scope == 'global' and distribution != 'uniform':
    raise ValueError(f"distribution={distribution!r} sets per-layer sparsities; "
                     "use scope='layerwise' with it, or distribution='uniform'.")
  leaves, treedef = _flatten(scores)
  idx = [i for i, x in enumerate(leaves) if x is not None]
  out = [None] * len(leaves)
  if not idx:
    return jax.tree.unflatten(treedef, out)
  if scope == 'global':
    for i, m in zip(idx, _topk_leaves([leaves[i] for i in idx], sparsity)):
      out[i] = m
  else:
    per_layer = _flatten(layer_sparsities(scores, sparsity, distribution))[0]
    for i in idx:
      out[i] = _topk_leaves([leaves[i]], per_layer[i])[0]
  return jax.tree.unflatten(treedef, out)


def count_masks(scores: ScoreTree, num_kept) -> types.Masks:
  """Per-layer top-k masks keeping a given number of entries in each scored leaf.

  The per-layer counts may be traced (one compilation serves every
  allocation), so a ``vmap`` over candidate allocations gives masks of fixed
  shapes, e.g. for ``pruning.controller``.

  Args:
    scores: score tree (``None`` where not pruned).
    num_kept: ``[L]`` ints, the entries kept in each non-``None`` leaf in
      tree-flatten order (clipped to ``[0, leaf size]``).

  Returns:
    Mask tree mirroring ``scores``: float32 0/1 arrays, exactly ``num_kept[l]``
    ones in leaf ``l`` (the highest scores; ties broken by position as in
    ``topk_masks``), ``None`` where ``scores`` is ``None``.

  Raises:
    ValueError: ``num_kept`` does not have one entry per scored leaf.
  """
  leaves, treedef = _flatten(scores)
  idx = [i for i, x in enumerate(leaves) if x is not None]
  num_kept = jnp.asarray(num_kept, jnp.int32)
  if num_kept.shape != (len(idx),):
    raise ValueError(f'num_kept must have shape [{len(idx)}] (one count per scored leaf), got {num_kept.shape}.')
  out = [None] * len(leaves)
  for j, i in enumerate(idx):
    n = leaves[i].size
    keep = _keep_flat(jnp.ravel(leaves[i]).astype(jnp.float32), n - jnp.clip(num_kept[j], 0, n))
    out[i] = jnp.reshape(keep, leaves[i].shape)
  return jax.tree.unflatten(treedef, out)


def _bias_path_for(kernel_path):
  """Path of the sibling ``bias`` of a ``kernel`` leaf, or None."""
  last = kernel_path[-1] if kernel_path else None
  if getattr(last, 'key', None) != 'kernel':
    return None
  return tuple(kernel_path[:-1]) + (jax.tree_util.DictKey('bias'),)


def unit_masks(params: types.Params, unit_scores: ScoreTree, sparsity, *,
               scope: str = 'layerwise', mask_bias: bool = True) -> types.Masks:
  """Structured masks that zero whole output units (neurons / conv filters).

  Args:
    params: parameter pytree (gives the kernel shapes and bias siblings).
    unit_scores: tree mirroring ``params`` with ``[out]`` scores at pruned
      kernels (``out`` = last axis of the kernel) and ``None`` elsewhere, e.g.
      from ``criteria.unit_norm_scores``.
    sparsity: fraction of units to remove, in ``[0, 1)``; exactly
      ``floor(sparsity * units + 0.5)`` per layer ('layerwise') or over all
      units of all pruned layers ('global'; compares raw scores across layers,
      so use it only with comparable scores).
    scope: 'layerwise' (default) or 'global'.
    mask_bias: if True, a pruned kernel's sibling ``bias`` leaf (same dict,
      shape ``[out]``) gets the same unit mask, so a removed unit outputs
      ``act(0)`` instead of ``act(bias)``; the returned tree then has masks at
      those bias leaves too. If False, biases stay ``None`` (dense).

  Returns:
    Mask tree mirroring ``params``: at each pruned kernel a float32 0/1 array
    of the kernel's full shape that is constant along every axis but the last
    (whole columns / filters are zero); at biases (``mask_bias``) ``[out]``.

  Raises:
    ValueError: bad ``sparsity``/``scope``, or a unit score whose length does
      not match its kernel's last axis.
  """
  _check_choice(scope, 'scope', SCOPES)
  sparsity = _check_sparsity(sparsity)
  path_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  score_leaves = treedef.flatten_up_to(unit_scores)
  idx = [i for i, s in enumerate(score_leaves) if s is not None]
  for i in idx:
    path, p = path_leaves[i]
    s = score_leaves[i]
    if jnp.ndim(s) != 1 or s.shape[0] != p.shape[-1]:
      raise ValueError(
          f'unit_scores at {jax.tree_util.keystr(path)} must have shape '
          f'[{p.shape[-1]}] (the last axis of the kernel {p.shape}), got {jnp.shape(s)}.')
  if scope == 'global':
    unit = _topk_leaves([score_leaves[i] for i in idx], sparsity) if idx else []
  else:
    unit = [_topk_leaves([score_leaves[i]], sparsity)[0] for i in idx]
  out = [None] * len(path_leaves)
  position = {path: j for j, (path, _) in enumerate(path_leaves)}
  for i, m in zip(idx, unit):
    path, p = path_leaves[i]
    out[i] = jnp.broadcast_to(m, p.shape)
    bias_path = _bias_path_for(path) if mask_bias else None
    j = position.get(bias_path) if bias_path is not None else None
    if j is not None and jnp.shape(path_leaves[j][1]) == m.shape:
      out[j] = m
  return jax.tree.unflatten(treedef, out)
