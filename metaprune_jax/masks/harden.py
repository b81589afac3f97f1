"""Hardening: gate logits that prune exactly a target fraction of the gated weights.

``harden`` ranks hard-concrete gates by ``log_alpha`` and saturates them: the
lowest are closed (0 in every draw and at test time), the rest open, so
meta-training can go on with a fixed mask of exactly the target sparsity.
Counting follows ``metaprune_jax.masks.sparsity`` (structured gates count every
weight they switch; hidden-unit gates are coupled through ``expand_units``).
No gated leaf is ever emptied: each keeps its highest-ranked gate open, so a
layer of unit gates keeps at least one neuron / channel / hidden unit.
"""

import math

import jax
import jax.numpy as jnp

from metaprune_jax import types
from metaprune_jax.masks import masking
from metaprune_jax.masks import sparsity

SCOPES = ('global', 'layerwise')  # One threshold across the gated leaves, or one per leaf.


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
           expand_units: sparsity.ExpandUnits | None = None, count: str = 'weights',
           scope: str = 'global') -> types.GateLogits:
  """Gate logits that prune exactly the lowest-``log_alpha`` gates up to ``target_sparsity``.

  Gates are ranked by ``log_alpha`` across every gated leaf (one global
  threshold, ties by position), so layers end up with different sparsities:
  a layer whose logits are low loses more. The lowest are closed until at least
  ``ceil(target_sparsity * N)`` gated weights are pruned (a structured gate
  counts all the weights it switches; with hidden-unit gates the count is the
  coupled one, found by bisection over the number of closed gates, since
  overlapping gates do not add up).

  **No layer is emptied.** Every gated leaf keeps its highest-ranked gate open
  (the highest ``log_alpha``; among ties the last by position), whatever the
  global threshold says: with one gate per unit (``'out_unit'``, ``'in_unit'``,
  hidden-unit gates) a layer keeps at least one neuron / channel / hidden
  unit, so the network stays connected; with ``'weight'`` gates a kernel keeps
  at least one weight. The weights such a kept gate would have pruned are made
  up by closing the next-lowest gates of the other leaves, so the total is still
  at least ``ceil(target_sparsity * N)``, and the fewest gates reaching it are
  closed. Only when the target cannot be reached with one gate per leaf open
  (``target_sparsity * N`` above ``N`` minus the weights of the kept gates) are
  all the other gates closed, and the realised sparsity falls short of it.

  The result is saturated: ``closed_logit`` gives gates that are 0 in every
  draw and at test time, ``open_logit`` gates that are 1 (up to ~1e-13
  probability), so meta-training can go on with a fixed mask. Jit-friendly.

  Args:
    params: parameter pytree (for group sizes).
    gate_logits: gate logits mirroring ``params``.
    target_sparsity: fraction of gated weights to prune, in [0, 1).
    open_logit: logit of the gates kept.
    closed_logit: logit of the gates pruned.
    expand_units: hidden-unit expansion (``sparsity`` module docstring); needed
      iff ``gate_logits`` gate a ``UNIT_SCALE`` leaf.
    count: what ``target_sparsity`` is a fraction of: ``'weights'`` (above) or
      ``'gates'`` (each gate counts 1: e.g. a fraction of the channels).
    scope: ``'global'`` (one threshold across leaves, above) or ``'layerwise'``:
      every gated leaf hardened on its own to ``target_sparsity`` (its lowest
      logits closed, one gate kept), so with one gate per channel every layer
      keeps the same share of its channels; for uncoupled gates only.

  Returns:
    A gate-logit tree of the same structure.
  """
  leaves, treedef = jax.tree.flatten(gate_logits, is_leaf=_is_none)
  sparsity.check_count(count, gate_logits, expand_units)
  if scope not in SCOPES:
    raise ValueError(f'scope={scope!r} is unknown; use one of {SCOPES} (--config.sparsity.harden_scope).')
  if scope == 'layerwise':
    if sparsity.couples_units(gate_logits, expand_units):
      raise ValueError("scope='layerwise' hardens each leaf on its own; hidden-unit gates couple leaves: use "
                       "scope='global' (--config.sparsity.harden_scope).")
    return jax.tree.map(
        lambda la, p: None if la is None else harden(
            {'leaf': p}, {'leaf': la}, target_sparsity, open_logit=open_logit, closed_logit=closed_logit,
            count=count)['leaf'], gate_logits, params, is_leaf=_is_none)
  group_sizes = jax.tree.leaves(masking.map_gated(
      lambda p, la: 1 if count == 'gates' else p.size // la.size, params, gate_logits))
  gated = [leaf for leaf in leaves if leaf is not None]
  if not gated:
    return gate_logits
  flat = jnp.concatenate([leaf.ravel() for leaf in gated])
  sizes = jnp.concatenate([jnp.full(leaf.size, size, jnp.int32) for leaf, size in zip(gated, group_sizes)])
  # The kept gate of each leaf ranks above every other gate: it is never closed.
  ranked = jnp.where(jnp.concatenate([_is_top_of_leaf(leaf) for leaf in gated]), jnp.inf, flat)
  num_weights = sparsity.num_gated_weights(params, gate_logits, expand_units=expand_units, count=count)
  need = math.ceil(target_sparsity * num_weights - 1e-9)
  if sparsity.couples_units(gate_logits, expand_units):
    prune = _coupled_prune(params, leaves, treedef, jnp.argsort(ranked, stable=True), need, expand_units,
                           max_closed=flat.shape[0] - len(gated))
  else:
    closable = sum(size * (leaf.size - 1) for leaf, size in zip(gated, group_sizes))
    prune = _lowest_up_to(ranked, sizes, min(need, closable))
  new_flat = jnp.where(prune, closed_logit, open_logit).astype(flat.dtype)
  return _unflatten_like(new_flat, leaves, treedef)


def _is_top_of_leaf(leaf: jax.Array) -> jax.Array:
  """``[leaf.size]`` bool, True at the gate a stable ascending sort of the leaf puts last (its highest)."""
  values = leaf.ravel()
  top = values.size - 1 - jnp.argmax(values[::-1])
  return jnp.arange(values.size) == top


def _unflatten_like(flat, leaves, treedef):
  out, start = [], 0
  for leaf in leaves:
    if leaf is None:
      out.append(None)
      continue
    out.append(flat[start:start + leaf.size].reshape(leaf.shape))
    start += leaf.size
  return jax.tree.unflatten(treedef, out)


def _coupled_prune(params, leaves, treedef, order, need: int, expand_units: sparsity.ExpandUnits, *,
                   max_closed: int) -> jax.Array:
  """Closed flags for the fewest lowest-ranked gates that prune ``need`` weights (coupled count).

  At most ``max_closed`` gates (the first of ``order``) are closed; if even they
  fall short of ``need``, all of them are.
  """
  num_gates = order.shape[0]

  def closed(count):
    return jnp.zeros((num_gates,), bool).at[order].set(jnp.arange(num_gates) < count)

  def pruned(count):
    gates = _unflatten_like(jnp.where(closed(count), 0.0, 1.0), leaves, treedef)
    return sparsity.num_pruned(params, gates, expand_units=expand_units)

  def body(_, bounds):  # Invariant: pruned(hi) >= need, or hi == max_closed.
    lo, hi = bounds
    mid = (lo + hi) // 2
    ok = pruned(mid) >= need
    return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

  _, hi = jax.lax.fori_loop(0, max(max_closed, 1).bit_length() + 1, body,
                            (jnp.zeros((), jnp.int32), jnp.asarray(max_closed, jnp.int32)))
  return closed(hi)
