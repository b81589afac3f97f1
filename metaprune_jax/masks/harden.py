"""Hardening: gate logits that prune exactly a target fraction of the gated weights.

``harden`` ranks hard-concrete gates by ``log_alpha`` and saturates them: the
lowest are closed (0 in every draw and at test time), the rest open, so
meta-training can go on with a fixed mask of exactly the target sparsity.
Counting follows ``metaprune_jax.masks.sparsity`` (structured gates count every
weight they switch; hidden-unit gates are coupled through ``expand_units``).
"""

import math

import jax
import jax.numpy as jnp

from metaprune_jax import types
from metaprune_jax.masks import masking
from metaprune_jax.masks import sparsity


def _is_none(x) -> bool:
  return x is None


def _sortable_int(x: jax.Array) -> jax.Array:
  """int32 keys ordered like the float32 values ``x`` (IEEE bit trick)."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
  return jnp.where(bits >= 0, bits, bits ^ jnp.int32(0x7FFFFFFF))


def _lowest_up_to(values: jax.Array, sizes: jax.Array, need: int) -> jax.Array:
  """Which entries a stable ascending sort prunes until ``need`` (weighted by ``sizes``) are pruned.

  Same result as sorting (ties by position) but with a 32-step bisection on the
  values' integer keys for the threshold: a few reductions instead of a sort
  (sorting is slow on XLA:CPU, notably under ``vmap`` over tasks).
  """
  keys = _sortable_int(values)

  def weight_at_most(v):
    return jnp.sum(jnp.where(keys <= v, sizes, 0))

  def bisect(_, bounds):  # Invariant: weight_at_most(lo) < need <= weight_at_most(hi).
    lo, hi = bounds
    mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)
    enough = weight_at_most(mid) >= need
    return jnp.where(enough, lo, mid), jnp.where(enough, mid, hi)
  lo = jnp.min(keys) - 1
  hi = jnp.max(keys)
  _, threshold = jax.lax.fori_loop(0, 32, bisect, (lo, hi))
  below = keys < threshold
  ties = keys == threshold
  pruned_before_tie = jnp.sum(jnp.where(below, sizes, 0)) + jnp.cumsum(jnp.where(ties, sizes, 0)) - jnp.where(
      ties, sizes, 0)
  return below | (ties & (pruned_before_tie < need))


def harden(params: types.Params, gate_logits: types.GateLogits, target_sparsity: float, *,
           open_logit: float = 20.0, closed_logit: float = -20.0,
           expand_units: sparsity.ExpandUnits | None = None) -> types.GateLogits:
  """Gate logits that prune exactly the lowest-``log_alpha`` gates up to ``target_sparsity``.

  Gates are ranked by ``log_alpha`` across every gated leaf (ties by position);
  the lowest are closed until at least ``ceil(target_sparsity * N)`` gated
  weights are pruned (a structured gate counts all the weights it switches; with
  hidden-unit gates the count is the coupled one, found by bisection over the
  number of closed gates, since overlapping gates do not add up). The
  result is saturated: ``closed_logit`` gives gates that are 0 in every draw and
  at test time, ``open_logit`` gates that are 1 (up to ~1e-13 probability), so
  meta-training can go on with a fixed mask. Jit-friendly.

  Args:
    params: parameter pytree (for group sizes).
    gate_logits: gate logits mirroring ``params``.
    target_sparsity: fraction of gated weights to prune, in [0, 1).
    open_logit: logit of the gates kept.
    closed_logit: logit of the gates pruned.
    expand_units: hidden-unit expansion (``sparsity`` module docstring); needed
      iff ``gate_logits`` gate a ``UNIT_SCALE`` leaf.

  Returns:
    A gate-logit tree of the same structure.
  """
  leaves, treedef = jax.tree.flatten(gate_logits, is_leaf=_is_none)
  group = jax.tree.leaves(masking.map_gated(lambda p, la: jnp.full(la.size, p.size // la.size, jnp.int32),
                                            params, gate_logits))
  gated = [leaf for leaf in leaves if leaf is not None]
  if not gated:
    return gate_logits
  flat = jnp.concatenate([leaf.ravel() for leaf in gated])
  sizes = jnp.concatenate(group)
  need = math.ceil(target_sparsity * sparsity.num_gated_weights(params, gate_logits, expand_units=expand_units)
                   - 1e-9)
  if sparsity.couples_units(gate_logits, expand_units):
    prune = _coupled_prune(params, leaves, treedef, jnp.argsort(flat, stable=True), need, expand_units)
  else:
    prune = _lowest_up_to(flat, sizes, need)
  new_flat = jnp.where(prune, closed_logit, open_logit).astype(flat.dtype)
  return _unflatten_like(new_flat, leaves, treedef)


def _unflatten_like(flat, leaves, treedef):
  out, start = [], 0
  for leaf in leaves:
    if leaf is None:
      out.append(None)
      continue
    out.append(flat[start:start + leaf.size].reshape(leaf.shape))
    start += leaf.size
  return jax.tree.unflatten(treedef, out)


def _coupled_prune(params, leaves, treedef, order, need: int, expand_units: sparsity.ExpandUnits) -> jax.Array:
  """Closed flags for the fewest lowest-ranked gates that prune ``need`` weights (coupled count)."""
  num_gates = order.shape[0]

  def closed(count):
    return jnp.zeros((num_gates,), bool).at[order].set(jnp.arange(num_gates) < count)

  def pruned(count):
    gates = _unflatten_like(jnp.where(closed(count), 0.0, 1.0), leaves, treedef)
    return sparsity.num_pruned(params, gates, expand_units=expand_units)

  def body(_, bounds):  # Invariant: pruned(hi) >= need (hi = all gates closed prunes everything).
    lo, hi = bounds
    mid = (lo + hi) // 2
    ok = pruned(mid) >= need
    return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

  _, hi = jax.lax.fori_loop(0, max(num_gates, 1).bit_length() + 1, body,
                            (jnp.zeros((), jnp.int32), jnp.asarray(num_gates, jnp.int32)))
  return closed(hi)
