"""Classic pruning criteria: pure functions from parameters (and gradients) to scores.

Every function returns a *score tree* that mirrors ``params``: ``None`` where a
leaf is not prunable, an array where it is. A higher score means "more
important, keep it"; ``metaprune_jax.pruning.select`` turns score trees into masks.

Which leaves are prunable is given by an optional ``prunable`` tree mirroring
``params`` whose leaves are ``None`` (leave dense) or anything else (prune).
By default (``prunable=None``) it is ``default_prunable(params)``: only leaves
named ``kernel`` with ``ndim >= 2`` (Dense ``[in, out]`` and conv
``[h, w, in, out]`` kernels), so biases, norms and embeddings stay dense.

Unstructured scores (``magnitude_scores``, ``random_scores``, ``snip_scores``)
have the full shape of their leaf. Structured unit scores
(``unit_norm_scores``) have shape ``[units]``,
one score per output unit (the last axis of a kernel: a neuron of a Dense layer,
a filter of a conv layer).
"""

from typing import Any

import jax
import jax.numpy as jnp

from metaprune_jax import types
from metaprune_jax.masks.masking import map_gated

ScoreTree = Any  # Mirrors Params; None where not prunable.


def _is_none(x) -> bool:
  return x is None


def _leaf_name(path) -> str | None:
  """Name of the last key on a pytree path (dict key or attribute name)."""
  if not path:
    return None
  last = path[-1]
  for attr in ('key', 'name'):
    if hasattr(last, attr):
      return str(getattr(last, attr))
  return None


def default_prunable(params: types.Params) -> Any:
  """The default prunable tree: ``True`` at ``kernel`` leaves with ``ndim >= 2``.

  Args:
    params: parameter pytree, e.g. ``{'Dense_0': {'kernel': [in, out],
      'bias': [out]}}``.

  Returns:
    A tree mirroring ``params`` with ``True`` at prunable leaves and ``None``
    elsewhere.
  """
  def fn(path, leaf):
    if leaf is None:
      return None
    if _leaf_name(path) == 'kernel' and jnp.ndim(leaf) >= 2:
      return True
    return None
  return jax.tree_util.tree_map_with_path(fn, params, is_leaf=_is_none)


def _resolve(params: types.Params, prunable: Any | None) -> Any:
  return default_prunable(params) if prunable is None else prunable


def magnitude_scores(params: types.Params, prunable: Any | None = None) -> ScoreTree:
  """Weight magnitude ``|w|`` (Han et al. 2015): small weights matter least.

  Args:
    params: parameter pytree.
    prunable: tree mirroring ``params``; ``None`` leaves are skipped. Defaults
      to ``default_prunable(params)``.

  Returns:
    Score tree: ``|w|`` with the leaf's shape at prunable leaves, else ``None``.
  """
  return map_gated(lambda p, _: jnp.abs(p), params, _resolve(params, prunable))


def random_scores(key: types.PRNGKey, params: types.Params,
                  prunable: Any | None = None) -> ScoreTree:
  """Uniform random scores in ``[0, 1)``: the random-pruning baseline.

  Args:
    key: PRNG key; split once per prunable leaf (in tree-flatten order).
    params: parameter pytree.
    prunable: as in ``magnitude_scores``.

  Returns:
    Score tree of float32 ``U[0, 1)`` draws with each prunable leaf's shape.
  """
  gates = _resolve(params, prunable)
  gate_leaves, treedef = jax.tree.flatten(gates, is_leaf=_is_none)
  param_leaves = treedef.flatten_up_to(params)
  num_scored = sum(g is not None for g in gate_leaves)
  keys = iter(jax.random.split(key, max(num_scored, 1)))
  out = []
  for g, p in zip(gate_leaves, param_leaves):
    out.append(None if g is None else
               jax.random.uniform(next(keys), jnp.shape(p), jnp.float32))
  return jax.tree.unflatten(treedef, out)


def snip_scores(params: types.Params, grads: types.Params,
                prunable: Any | None = None) -> ScoreTree:
  """Connection sensitivity ``|w * g|`` (SNIP, Lee et al. 2019).

  This is also the first-order Taylor estimate of the loss change when a
  weight is removed (``|L(w) - L(0)| ~ |g * w|``).

  Args:
    params: parameter pytree ``w``.
    grads: gradients ``g = dL/dw`` with the structure of ``params``, computed by
      the caller (e.g. of the meta-loss on a batch of tasks).
    prunable: as in ``magnitude_scores``.

  Returns:
    Score tree: ``|w * g|`` with the leaf's shape at prunable leaves.
  """
  return map_gated(lambda p, _, g: jnp.abs(p * g), params,
                   _resolve(params, prunable), grads)



def unit_norm_scores(params: types.Params, prunable: Any | None = None, *,
                     ord: int = 1) -> ScoreTree:  # pylint: disable=redefined-builtin
  """Structured scores: the L1 or L2 norm of each output unit's incoming weights.

  An output unit is a slice along the last axis of a kernel: a neuron of a
  Dense ``[in, out]`` kernel (a column) or a filter of a conv
  ``[h, w, in, out]`` kernel (Li et al. 2017 rank filters by L1 norm).

  Args:
    params: parameter pytree.
    prunable: as in ``magnitude_scores``.
    ord: 1 (sum of ``|w|``) or 2 (Euclidean norm).

  Returns:
    Score tree with float ``[out]`` arrays at prunable leaves.

  Raises:
    ValueError: if ``ord`` is not 1 or 2.
  """
  if ord not in (1, 2):
    raise ValueError(f'ord must be 1 (L1) or 2 (L2), got {ord!r}.')

  def fn(p, _):
    flat = jnp.reshape(p, (-1, p.shape[-1]))
    if ord == 1:
      return jnp.sum(jnp.abs(flat), axis=0)
    return jnp.sqrt(jnp.sum(jnp.square(flat), axis=0))
  return map_gated(fn, params, _resolve(params, prunable))
