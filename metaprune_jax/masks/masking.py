"""Applying masks to parameter pytrees: the one masking helper every net uses.

Masks mirror the parameter tree; a ``None`` leaf leaves that parameter dense.
A mask leaf broadcasts onto its parameter (full shape, or a structured shape such
as ``[out]`` for a ``[in, out]`` kernel). Multiplying by an all-ones mask is
exact in floating point, so it reproduces the dense output bit for bit.
"""

import jax

from metaprune_jax import types


def _is_none(x) -> bool:
  return x is None


def apply_masks(params: types.Params, masks: types.Masks | None) -> types.Params:
  """Returns ``params * masks`` leafwise; ``None`` mask leaves (or masks=None) keep the leaf.

  Args:
    params: parameter pytree.
    masks: pytree mirroring ``params`` whose leaves are ``None`` or arrays that
      broadcast onto the matching parameter leaf. ``None`` means no masking.

  Returns:
    A pytree with the structure of ``params``.
  """
  if masks is None:
    return params
  return jax.tree.map(lambda p, m: p if m is None else p * m, params, masks)


def combine_masks(fixed_masks: types.Masks | None, gate_masks: types.Masks | None) -> types.Masks | None:
  """The leafwise product of two mask trees.

  Args:
    fixed_masks: mask tree mirroring the params, or None (no masks).
    gate_masks: mask tree of the same structure, or None.

  Returns:
    The other tree when one is None (None when both are); otherwise a tree whose
    leaf is ``f * g`` where both leaves are arrays (broadcast: ``[out]`` times
    ``[in, out]`` gives ``[in, out]``) and the non-None one where a leaf is None
    in one tree (``None`` leaves mean unmasked).
  """
  if fixed_masks is None or gate_masks is None:
    return gate_masks if fixed_masks is None else fixed_masks
  return jax.tree.map(lambda f, g: g if f is None else (f if g is None else f * g), fixed_masks, gate_masks,
                      is_leaf=_is_none)


def map_gated(fn, params: types.Params, gates: types.Masks, *rest):
  """Maps ``fn(param, gate, *rest_leaves)`` over gated leaves, ``None`` elsewhere.

  ``gates`` decides the structure: wherever it holds ``None`` the result holds
  ``None``. Use it to build trees that mirror a gate tree (masks, scores).
  """
  return jax.tree.map(
      lambda g, p, *r: None if g is None else fn(p, g, *r),
      gates, params, *rest, is_leaf=_is_none)


def count_params(params: types.Params) -> int:
  """Total number of scalars in ``params``."""
  return sum(int(x.size) for x in jax.tree.leaves(params))
