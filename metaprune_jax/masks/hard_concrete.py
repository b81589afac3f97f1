"""Hard-concrete L0 gates (Louizos, Welling & Kingma, 2018).

A gate ``z`` in [0, 1] per weight (or per unit) with a learnable location
``log_alpha``. Training samples

    u ~ U(0, 1)
    s = sigmoid((log u - log(1 - u) + log_alpha) / beta)
    z = clip(s * (zeta - gamma) + gamma, 0, 1)

which puts real probability mass on exactly 0 and exactly 1 and is
reparameterised (differentiable in ``log_alpha``). At test time the gate is
deterministic, ``clip(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``, with
exact zeros (pruned) and exact ones. The expected L0 norm has the closed form

    P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta)).

Gate-logit trees mirror the parameter tree; ``None`` leaves stay dense. A gate
leaf broadcasts onto its parameter: granularity ``'weight'`` gives the kernel's
own shape, ``'out_unit'`` a ``[out]`` vector (one gate per neuron / filter) and
``'in_unit'`` a ``[in, 1]`` column (one gate per input unit); both structured
forms broadcast onto ``[..., in, out]`` kernels (dense and HWIO conv alike).
"""

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaprune_jax import types
from metaprune_jax.masks import noise
from metaprune_jax.nets import masked

GRANULARITIES = ('weight', 'out_unit', 'in_unit')


class HardConcrete(NamedTuple):
  """Hard-concrete stretch and temperature; the defaults are the paper's."""
  beta: float = 2.0 / 3.0
  gamma: float = -0.1
  zeta: float = 1.1


def gate_shape(param_shape: Sequence[int], granularity: str) -> tuple[int, ...]:
  """Shape of the gate leaf for a kernel of ``param_shape`` (``[..., in, out]``)."""
  if granularity not in GRANULARITIES:
    raise ValueError(f'granularity={granularity!r} is unknown; use one of {GRANULARITIES}.')
  if granularity == 'weight':
    return tuple(param_shape)
  if len(param_shape) < 2:
    raise ValueError(f'granularity={granularity!r} needs a kernel of rank >= 2, got shape {param_shape}.')
  if granularity == 'out_unit':
    return (param_shape[-1],)
  return (param_shape[-2], 1)


def _path_names(path) -> list[str]:
  return [str(getattr(k, 'key', getattr(k, 'name', k))) for k in path]


def default_granularity(granularity: str = 'weight', dense_layers: Sequence[str] = ()):
  """Gates every ``kernel`` leaf at ``granularity``, except modules named in ``dense_layers``.

  Returns:
    A function ``(path_names, leaf) -> granularity or None`` for ``init_gate_logits``.
  """
  gate_shape((1, 1), granularity)  # Validates the name early.
  dense = set(dense_layers)

  def spec(names: list[str], leaf) -> str | None:
    if not names or names[-1] != 'kernel' or leaf.ndim < 2:
      return None
    if dense.intersection(names[:-1]):
      return None
    return granularity
  return spec


def init_gate_logits(
    params: types.Params,
    spec: Callable[[list[str], jax.Array], str | None] | str = 'weight',
    *,
    init_logit: float = 3.0,
) -> types.GateLogits:
  """Gate logits (``log_alpha``) mirroring ``params``.

  Args:
    params: parameter pytree.
    spec: a granularity name applied to every ``kernel`` leaf, or a function
      ``(path_names, leaf) -> granularity | None`` (``None``: leaf stays dense).
    init_logit: initial ``log_alpha``. The default 3.0 gives deterministic gates of
      exactly 1 and P(gate != 0) ~ 0.99, i.e. a dense start.

  Returns:
    A tree with ``None`` for dense leaves and float32 arrays of ``gate_shape``.
  """
  if isinstance(spec, str):
    spec = default_granularity(spec)

  def leaf_logits(path, leaf):
    granularity = spec(_path_names(path), leaf)
    if granularity is None:
      return None
    return jnp.full(gate_shape(leaf.shape, granularity), init_logit, jnp.float32)
  return jax.tree_util.tree_map_with_path(leaf_logits, params)


def _is_none(x) -> bool:
  return x is None


def sample_gates(gate_logits: types.GateLogits, key: types.PRNGKey,
                 hc: HardConcrete = HardConcrete(), *, noise_method: str = 'hash') -> types.Masks:
  """Reparameterised training-time gates, one independent draw per gate."""
  u = noise.uniform_tree(gate_logits, key, method=noise_method)
  return jax.tree.map(lambda la, n: gates_from_noise(la, n, hc), gate_logits, u)


def gates_from_noise(log_alpha: jax.Array, u: jax.Array, hc: HardConcrete = HardConcrete()) -> jax.Array:
  """The hard-concrete gate for logits ``log_alpha`` and uniform noise ``u``.

  Computes ``sigmoid((logit(u) + log_alpha) / beta)`` as
  ``1 / (1 + ((1 - u) / u) ** (1 / beta) * exp(-log_alpha / beta))``: the
  ``log_alpha`` factor has no task axis (computed once under ``vmap``) and, for
  the default ``beta = 2/3``, the noise factor is ``r * sqrt(r)``, so a sampled
  gate costs no transcendental function per task. The exponent is clipped to
  +-40, where the gate is saturated and its gradient is zero anyway.

  Args:
    log_alpha: gate logits, any shape.
    u: uniform noise in (0, 1), broadcastable with ``log_alpha``.
    hc: hard-concrete constants.
  """
  r = (1.0 - u) / u
  inv_beta = 1.0 / hc.beta
  if abs(inv_beta - 1.5) < 1e-12:
    noise_factor = r * jnp.sqrt(r)
  elif inv_beta == 1.0:
    noise_factor = r
  else:
    noise_factor = jnp.power(r, inv_beta)
  s = 1.0 / (1.0 + noise_factor * jnp.exp(jnp.clip(-log_alpha * inv_beta, -40.0, 40.0)))
  return jnp.clip(s * (hc.zeta - hc.gamma) + hc.gamma, 0.0, 1.0)


def deterministic_gates(gate_logits: types.GateLogits, hc: HardConcrete = HardConcrete()) -> types.Masks:
  """Test-time gates: exact 0 where pruned, exact 1 where fully open."""
  return jax.tree.map(
      lambda la: jnp.clip(jax.nn.sigmoid(la) * (hc.zeta - hc.gamma) + hc.gamma, 0.0, 1.0),
      gate_logits)


def prob_nonzero(log_alpha: jax.Array, hc: HardConcrete = HardConcrete()) -> jax.Array:
  """Closed-form P(z != 0) for each gate; same shape as ``log_alpha``."""
  return jax.nn.sigmoid(log_alpha - hc.beta * math.log(-hc.gamma / hc.zeta))


def _group_size(param: jax.Array, gate: jax.Array) -> int:
  """How many weights of ``param`` one entry of ``gate`` switches."""
  return param.size // gate.size


def expected_l0(params: types.Params, gate_logits: types.GateLogits,
                hc: HardConcrete = HardConcrete()) -> dict[str, jax.Array]:
  """Closed-form expected number of nonzero gated weights.

  Returns:
    ``{'per_leaf': tree mirroring gate_logits (scalars), 'total': scalar}``; a
    structured gate counts every weight it switches.
  """
  per_leaf = masked.map_gated(
      lambda p, la: jnp.sum(prob_nonzero(la, hc)) * _group_size(p, la), params, gate_logits)
  total = sum(jax.tree.leaves(per_leaf), jnp.zeros((), jnp.float32))
  return {'per_leaf': per_leaf, 'total': total}


def num_gated_weights(params: types.Params, gate_logits: types.GateLogits) -> int:
  """Number of weights under a gate (a static Python int)."""
  return sum(jax.tree.leaves(masked.map_gated(lambda p, la: p.size, params, gate_logits)))


def expected_density(params: types.Params, gate_logits: types.GateLogits,
                     hc: HardConcrete = HardConcrete()) -> jax.Array:
  """Expected fraction of gated weights that are nonzero (1 - expected sparsity)."""
  total = num_gated_weights(params, gate_logits)
  if total == 0:
    return jnp.ones((), jnp.float32)
  return expected_l0(params, gate_logits, hc)['total'] / total


def realised_sparsity(params: types.Params, gate_logits: types.GateLogits,
                      hc: HardConcrete = HardConcrete()) -> jax.Array:
  """Fraction of gated weights whose deterministic gate is exactly 0."""
  total = num_gated_weights(params, gate_logits)
  if total == 0:
    return jnp.zeros((), jnp.float32)
  zeros = masked.map_gated(
      lambda p, z: jnp.sum(z == 0.0) * _group_size(p, z), params, deterministic_gates(gate_logits, hc))
  return sum(jax.tree.leaves(zeros), jnp.zeros((), jnp.float32)) / total


def nonzero_params(params: types.Params, gate_logits: types.GateLogits,
                   hc: HardConcrete = HardConcrete()) -> jax.Array:
  """Parameters left after deterministic gating: ungated leaves count in full."""
  masks = deterministic_gates(gate_logits, hc)
  effective = masked.apply_masks(
      jax.tree.map(jnp.ones_like, params),
      jax.tree.map(lambda m: None if m is None else (m != 0).astype(jnp.float32), masks, is_leaf=_is_none))
  return sum(jnp.sum(x) for x in jax.tree.leaves(effective))


def _sortable_int(x: jax.Array) -> jax.Array:
  """int32 keys ordered like the float32 values ``x`` (IEEE bit trick)."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
  return jnp.where(bits >= 0, bits, bits ^ jnp.int32(0x7FFFFFFF))


def _lowest_up_to(values: jax.Array, sizes: jax.Array, need: int) -> jax.Array:
  """Which entries a stable ascending sort prunes until ``need`` (weighted by ``sizes``) are pruned.

  Same result as sorting (ties by position) but with a 32-step bisection on the
  values' integer keys for the threshold: sorting is slow on XLA:CPU (~10 ms for
  25 tasks x 1,680 gates under vmap), the bisection is a few reductions.
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
           open_logit: float = 20.0, closed_logit: float = -20.0) -> types.GateLogits:
  """Gate logits that prune exactly the lowest-``log_alpha`` gates up to ``target_sparsity``.

  Gates are ranked by ``log_alpha`` across every gated leaf (ties by position);
  the lowest are closed until at least ``ceil(target_sparsity * N)`` gated
  weights are pruned (a structured gate counts all the weights it switches). The
  result is saturated: ``closed_logit`` gives gates that are 0 in every draw and
  at test time, ``open_logit`` gates that are 1 (up to ~1e-13 probability), so
  meta-training can go on with a fixed mask. Jit-friendly.

  Args:
    params: parameter pytree (for group sizes).
    gate_logits: gate logits mirroring ``params``.
    target_sparsity: fraction of gated weights to prune, in [0, 1).

  Returns:
    A gate-logit tree of the same structure.
  """
  leaves, treedef = jax.tree.flatten(gate_logits, is_leaf=_is_none)
  group = jax.tree.leaves(masked.map_gated(lambda p, la: jnp.full(la.size, _group_size(p, la), jnp.int32),
                                           params, gate_logits))
  gated = [leaf for leaf in leaves if leaf is not None]
  if not gated:
    return gate_logits
  flat = jnp.concatenate([leaf.ravel() for leaf in gated])
  sizes = jnp.concatenate(group)
  need = math.ceil(target_sparsity * num_gated_weights(params, gate_logits) - 1e-9)
  prune = _lowest_up_to(flat, sizes, need)
  new_flat = jnp.where(prune, closed_logit, open_logit).astype(flat.dtype)
  out, start = [], 0
  for leaf in leaves:
    if leaf is None:
      out.append(None)
      continue
    out.append(new_flat[start:start + leaf.size].reshape(leaf.shape))
    start += leaf.size
  return jax.tree.unflatten(treedef, out)
