"""Sparsity counters: how many weights gates and masks keep, expected and realised.

Two kinds of input. Gate-logit counters (``expected_l0``, ``expected_density``,
``num_gated_weights``, ``realised_sparsity``, ``nonzero_params``,
``unit_sparsity``) take a tree of hard-concrete ``log_alpha`` mirroring
``params``; ``pruned_per_leaf`` takes gate values (e.g. deterministic gates or a
task's hardened mask). Mask-tree counters (``mask_sparsity``, ``nonzero_count``)
take fixed 0/1 masks such as the ones ``metaprune_jax.pruning.select`` builds.
``None`` leaves are dense everywhere; a structured gate counts every weight it
switches.

**Hidden-unit coupling.** A gate on a recurrent net's ``UNIT_SCALE`` leaf
(``hard_concrete.UNIT_SCALE``, shape ``[H]``) removes the whole unit: rows and
columns of other leaves. Which weights that is depends on the net, so the
caller supplies it as ``expand_units(params, unit_keep) -> keep-factor tree``:
``params`` is the dict holding the ``UNIT_SCALE`` leaf, ``unit_keep`` is ``[H]``
survival values in [0, 1] (a probability, or a 0/1 indicator), and the result
mirrors ``params`` with full-shape per-weight survival factors (``None`` for
leaves no unit touches), e.g. ``metaprune_jax.nets.rnn.unit_keep_factors``.
Counting is then coupled: a weight survives only if its own gate and every unit
gate touching it are nonzero (independent gates, so probabilities multiply), and
the gated weights are every weight any gate touches. A gate tree with a gated
``UNIT_SCALE`` leaf and ``expand_units=None`` is an error (the count would miss
what the unit gates remove); trees without unit gates ignore ``expand_units``.

**What a sparsity counts** (``count``, one of ``COUNTS``): ``'weights'`` (the
default) counts every weight a gate switches, so a filter gate of a 3x3 conv with
64 inputs weighs 576 and one of the first block (one input channel) 9;
``'gates'`` counts each gate once, so with ``'out_unit'`` gates a sparsity is the
fraction of neurons / channels removed whatever their size. What a channel
costs at inference is closer to the second on memory-bound layers (an early conv
block's activations are large and its filters small: ``benchmarks/channel_latency.py``).
``'gates'`` is for uncoupled gates (no ``UNIT_SCALE`` leaf).
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from metaprune_jax import types
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import masking

ExpandUnits = Callable[[types.Params, jax.Array], types.Masks]
"""``expand_units(params, unit_keep [H]) -> tree mirroring params`` of per-weight unit survival factors."""


def _is_none(x) -> bool:
  return x is None


COUNTS = ('weights', 'gates')


def _group_size(param: jax.Array, gate: jax.Array, count: str = 'weights') -> int:
  """What one entry of ``gate`` counts for: the weights of ``param`` it switches, or 1 (``count='gates'``)."""
  return 1 if count == 'gates' else param.size // gate.size


def check_count(count: str, gates, expand_units: ExpandUnits | None) -> None:
  """Raises ``ValueError`` for an unknown ``count`` or ``'gates'`` on a tree with hidden-unit gates."""
  if count not in COUNTS:
    raise ValueError(f'count={count!r} is unknown; use one of {COUNTS} (--config.sparsity.count).')
  if count == 'gates' and _has_unit_gates(gates):
    raise ValueError(f"count='gates' counts uncoupled gates; these gates gate a {hard_concrete.UNIT_SCALE!r} leaf "
                     "(hidden-unit gates remove overlapping weights): use count='weights' (--config.sparsity.count).")


def _has_unit_gates(gates) -> bool:
  """Whether some dict of ``gates`` holds a non-None ``UNIT_SCALE`` entry (static: tree structure only)."""
  if isinstance(gates, dict):
    if gates.get(hard_concrete.UNIT_SCALE) is not None:
      return True
    return any(_has_unit_gates(v) for v in gates.values())
  return isinstance(gates, (list, tuple)) and any(_has_unit_gates(v) for v in gates)


def couples_units(gates, expand_units: ExpandUnits | None) -> bool:
  """Whether counting ``gates`` (logits or values) takes the coupled hidden-unit path.

  Args:
    gates: gate-logit or gate-value tree.
    expand_units: the caller's unit expansion (module docstring), or None.

  Returns:
    True if ``gates`` gate a ``UNIT_SCALE`` leaf (``expand_units`` is then
    used), False if they gate none.

  Raises:
    ValueError: unit gates are present but ``expand_units`` is None.
  """
  if not _has_unit_gates(gates):
    return False
  if expand_units is None:
    raise ValueError(f'the gates gate a {hard_concrete.UNIT_SCALE!r} leaf (hidden-unit gates) but '
                     'expand_units is None; pass expand_units=metaprune_jax.nets.rnn.unit_keep_factors '
                     '(or the net\'s own expansion) so the weights each unit gate removes are counted.')
  return True


def _keep_tree(params, keep, expand_units: ExpandUnits | None):
  """Per-weight survival values with hidden-unit gates expanded.

  Args:
    params: parameter tree.
    keep: tree mirroring the gate tree of per-gate survival values (probability
      of a nonzero gate, or a 0/1 indicator); ``None`` where ungated.
    expand_units: the unit expansion; only used where ``keep`` has a ``UNIT_SCALE`` entry.

  Returns:
    A tree mirroring ``params``: full-shape survival values for every weight
    some gate touches, ``None`` elsewhere.
  """
  unit = hard_concrete.UNIT_SCALE
  if keep is None:
    return None
  if expand_units is not None and isinstance(keep, dict) and keep.get(unit) is not None:
    own = jax.tree.map(lambda k, p: None if k is None else jnp.broadcast_to(k, p.shape), keep, params,
                       is_leaf=_is_none)
    own[unit] = None  # The unit gate is that leaf's own gate: counted once, in the factors.
    factors = expand_units(params, keep[unit])
    return jax.tree.map(lambda f, o: o if f is None else (f if o is None else o * f), factors, own,
                        is_leaf=_is_none)
  if isinstance(params, dict):
    return {k: _keep_tree(params[k], keep[k], expand_units) for k in params}
  return None if keep is None else jnp.broadcast_to(keep, params.shape)


def unit_sparsity(gate_logits: types.GateLogits,
                  hc: hard_concrete.HardConcrete = hard_concrete.HardConcrete()) -> float | None:
  """Fraction of hidden-unit gates (``UNIT_SCALE`` leaves) that are deterministically 0; None if none."""
  units = [la for path, la in jax.tree_util.tree_leaves_with_path(gate_logits)
           if hard_concrete.path_names(path)[-1] == hard_concrete.UNIT_SCALE]
  if not units:
    return None
  z = jnp.concatenate([hard_concrete.deterministic_gates(la, hc).ravel() for la in units])
  return float(jnp.mean(z == 0.0))


def expected_l0(params: types.Params, gate_logits: types.GateLogits,
                hc: hard_concrete.HardConcrete = hard_concrete.HardConcrete(), *,
                expand_units: ExpandUnits | None = None, count: str = 'weights') -> dict[str, jax.Array]:
  """Closed-form expected number of nonzero gated weights (``count='gates'``: of open gates).

  Args:
    params: parameter pytree.
    gate_logits: ``log_alpha`` tree mirroring ``params``.
    hc: hard-concrete constants.
    expand_units: hidden-unit expansion (module docstring); needed iff unit gates are present.
    count: ``'weights'`` or ``'gates'`` (module docstring).

  Returns:
    ``{'per_leaf': tree mirroring gate_logits (scalars), 'total': scalar}``; a
    structured gate counts every weight it switches. With hidden-unit gates,
    ``per_leaf`` mirrors ``params`` instead (every weight some gate touches).
  """
  check_count(count, gate_logits, expand_units)
  if couples_units(gate_logits, expand_units):
    keep = _keep_tree(params, jax.tree.map(lambda la: hard_concrete.prob_nonzero(la, hc), gate_logits),
                      expand_units)
    per_leaf = jax.tree.map(jnp.sum, keep)
    return {'per_leaf': per_leaf, 'total': sum(jax.tree.leaves(per_leaf), jnp.zeros((), jnp.float32))}
  per_leaf = masking.map_gated(
      lambda p, la: jnp.sum(hard_concrete.prob_nonzero(la, hc)) * _group_size(p, la, count), params, gate_logits)
  total = sum(jax.tree.leaves(per_leaf), jnp.zeros((), jnp.float32))
  return {'per_leaf': per_leaf, 'total': total}


def num_gated_weights(params: types.Params, gate_logits: types.GateLogits, *,
                      expand_units: ExpandUnits | None = None, count: str = 'weights') -> int:
  """Number of weights under a gate (a static Python int); with unit gates, every weight one touches.

  ``count='gates'``: the number of gates instead.
  """
  check_count(count, gate_logits, expand_units)
  if count == 'gates':
    return sum(int(math.prod(la.shape)) for la in jax.tree.leaves(gate_logits))
  if couples_units(gate_logits, expand_units):
    keep = jax.eval_shape(lambda p, g: _keep_tree(p, g, expand_units), params,
                          jax.tree.map(lambda la: jnp.zeros(la.shape), gate_logits))
    return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(keep))
  return sum(jax.tree.leaves(masking.map_gated(lambda p, la: p.size, params, gate_logits)))


def expected_density(params: types.Params, gate_logits: types.GateLogits,
                     hc: hard_concrete.HardConcrete = hard_concrete.HardConcrete(), *,
                     expand_units: ExpandUnits | None = None, count: str = 'weights') -> jax.Array:
  """Expected fraction of gated weights (``count='gates'``: of gates) that are nonzero; a float32 scalar."""
  total = num_gated_weights(params, gate_logits, expand_units=expand_units, count=count)
  if total == 0:
    return jnp.ones((), jnp.float32)
  return expected_l0(params, gate_logits, hc, expand_units=expand_units, count=count)['total'] / total


def pruned_per_leaf(params: types.Params, gates: types.Masks, *,
                    expand_units: ExpandUnits | None = None):
  """Pruned weights per parameter leaf given gate values ``gates`` (e.g. one task's hardened mask).

  Args:
    params: parameter pytree.
    gates: gate values mirroring ``params`` (``None`` where ungated, or None
      for no gates); a weight is pruned where its (broadcast) gate is exactly 0.
    expand_units: hidden-unit expansion (module docstring); needed iff unit gates are present.

  Returns:
    A tree mirroring ``params``: for every leaf some gate touches, an int32
    scalar, the number of its weights whose survival is exactly 0 (a structured
    gate counts every weight it switches; a unit gate every weight of its unit);
    ``None`` for untouched leaves. Works under ``vmap``.
  """
  couples_units(gates, expand_units)
  keep = _keep_tree(params, jax.tree.map(lambda z: (z != 0.0).astype(jnp.float32), gates), expand_units)
  return jax.tree.map(lambda k: None if k is None else jnp.sum(k == 0.0, dtype=jnp.int32), keep,
                      is_leaf=_is_none)


def num_pruned(params: types.Params, gates: types.Masks, *,
               expand_units: ExpandUnits | None = None) -> jax.Array:
  """Total of ``pruned_per_leaf``: weights whose survival is exactly 0, as a float32 scalar."""
  counts = pruned_per_leaf(params, gates, expand_units=expand_units)
  return sum(jax.tree.leaves(counts), jnp.zeros((), jnp.int32)).astype(jnp.float32)


def realised_sparsity(params: types.Params, gate_logits: types.GateLogits,
                      hc: hard_concrete.HardConcrete = hard_concrete.HardConcrete(), *,
                      expand_units: ExpandUnits | None = None, count: str = 'weights') -> jax.Array:
  """Fraction of gated weights (``count='gates'``: of gates) whose deterministic gate is exactly 0; float32."""
  total = num_gated_weights(params, gate_logits, expand_units=expand_units, count=count)
  if total == 0:
    return jnp.zeros((), jnp.float32)
  gates = hard_concrete.deterministic_gates(gate_logits, hc)
  if couples_units(gate_logits, expand_units):
    return num_pruned(params, gates, expand_units=expand_units) / total
  zeros = masking.map_gated(lambda p, z: jnp.sum(z == 0.0) * _group_size(p, z, count), params, gates)
  return sum(jax.tree.leaves(zeros), jnp.zeros((), jnp.float32)) / total


def nonzero_params(params: types.Params, gate_logits: types.GateLogits,
                   hc: hard_concrete.HardConcrete = hard_concrete.HardConcrete(), *,
                   expand_units: ExpandUnits | None = None) -> jax.Array:
  """Parameters left after deterministic gating (by gate, not by value): ungated leaves count in full.

  Returns:
    A float32 scalar: every scalar of ``params`` minus the ones a gate removes.
  """
  gates = hard_concrete.deterministic_gates(gate_logits, hc)
  if couples_units(gate_logits, expand_units):
    return masking.count_params(params) - num_pruned(params, gates, expand_units=expand_units)
  effective = masking.apply_masks(
      jax.tree.map(jnp.ones_like, params),
      jax.tree.map(lambda m: None if m is None else (m != 0).astype(jnp.float32), gates, is_leaf=_is_none))
  return sum(jnp.sum(x) for x in jax.tree.leaves(effective))


def mask_sparsity(masks: types.Masks) -> jax.Array:
  """Realised fraction of zeros over all entries of the non-``None`` mask leaves.

  Counts mask entries (a structured ``[out]`` mask counts ``out`` entries), so
  for the full-shape masks of ``pruning.select`` it is the fraction of masked
  weights that are pruned. Returns a float32 scalar (0.0 when every leaf is ``None``).
  """
  leaves = [x for x in jax.tree.leaves(masks) if x is not None]
  if not leaves:
    return jnp.zeros((), jnp.float32)
  total = sum(x.size for x in leaves)
  zeros = sum(jnp.sum(x == 0) for x in leaves)
  return (zeros / total).astype(jnp.float32)


def nonzero_count(params: types.Params, masks: types.Masks | None, *,
                  expand_units: ExpandUnits | None = None) -> jax.Array:
  """Number of nonzero scalars (by value) in ``apply_masks(params, masks)`` over all leaves.

  Unlike ``nonzero_params`` (which counts by gate), dense leaves count their
  nonzero entries only, and weights that are already exactly zero (e.g.
  zero-initialised biases) count as zeros. With a ``UNIT_SCALE`` mask,
  ``expand_units`` also zeroes every weight of a unit whose mask is 0.

  Returns:
    An int32 scalar.
  """
  effective = masking.apply_masks(params, masks)
  if masks is not None and couples_units(masks, expand_units):
    keep = _keep_tree(params, jax.tree.map(lambda m: (m != 0.0).astype(jnp.float32), masks), expand_units)
    effective = masking.apply_masks(effective, keep)
  return sum((jnp.count_nonzero(x).astype(jnp.int32) for x in jax.tree.leaves(effective)),
             jnp.zeros((), jnp.int32))
