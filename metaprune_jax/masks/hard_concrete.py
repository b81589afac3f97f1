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

Recurrent nets (``metaprune_jax.nets.rnn``): ``'weight'`` also gates the
``input_kernel`` and ``recurrent_kernel`` leaves, one gate per weight each.
Granularity ``'hidden_unit'`` puts one gate per hidden unit on the RNN's
``unit_scale`` leaf (``[H]``), which the net expands onto every gate matrix,
the unit's recurrent row and column and its readout row; ``'weight+hidden_unit'``
does both. Counting is coupled for such blocks: a weight survives only if its
own gate and every unit gate touching it are nonzero (independent gates, so the
probabilities multiply), and the gated weights are every weight any gate touches.
``expected_density``, ``realised_sparsity``, ``nonzero_params`` and ``harden``
therefore count what is really gone; ``unit_sparsity`` reports the fraction of
hidden units removed. Trees without unit gates take the original per-leaf path.
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from metaprune_jax import types
from metaprune_jax.masks import noise
from metaprune_jax.nets import masked
from metaprune_jax.nets import rnn

GRANULARITIES = ('weight', 'out_unit', 'in_unit', 'hidden_unit', 'weight+hidden_unit')
_LEAF_GRANULARITIES = ('weight', 'out_unit', 'in_unit')
_KERNEL_NAMES = ('kernel', 'input_kernel', 'recurrent_kernel')


class HardConcrete(NamedTuple):
  """Hard-concrete stretch and temperature; the defaults are the paper's."""
  beta: float = 2.0 / 3.0
  gamma: float = -0.1
  zeta: float = 1.1


def gate_shape(param_shape: Sequence[int], granularity: str) -> tuple[int, ...]:
  """Shape of the gate leaf for a kernel of ``param_shape`` (``[..., in, out]``)."""
  if granularity not in _LEAF_GRANULARITIES:
    raise ValueError(f'granularity={granularity!r} is unknown for a leaf; use one of {_LEAF_GRANULARITIES}.')
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
  """Gates every kernel leaf at ``granularity``, except modules named in ``dense_layers``.

  Kernel leaves are those named ``kernel``, ``input_kernel`` or ``recurrent_kernel``
  (rank >= 2). ``'hidden_unit'`` gates only RNN ``unit_scale`` leaves (one gate
  per hidden unit, kernels ungated); ``'weight+hidden_unit'`` gates both.

  Returns:
    A function ``(path_names, leaf) -> granularity or None`` for ``init_gate_logits``.
  """
  if granularity not in GRANULARITIES:
    raise ValueError(f'granularity={granularity!r} is unknown; use one of {GRANULARITIES}.')
  kernel_granularity = {'hidden_unit': None, 'weight+hidden_unit': 'weight'}.get(granularity, granularity)
  gate_units = granularity in ('hidden_unit', 'weight+hidden_unit')
  dense = set(dense_layers)

  def spec(names: list[str], leaf) -> str | None:
    if not names or dense.intersection(names[:-1]):
      return None
    if names[-1] == rnn.UNIT_SCALE and leaf.ndim == 1:
      return 'weight' if gate_units else None
    if names[-1] not in _KERNEL_NAMES or leaf.ndim < 2:
      return None
    return kernel_granularity
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


def _sigmoid_and_stretched(log_alpha: jax.Array, u: jax.Array, hc: HardConcrete) -> tuple[jax.Array, jax.Array]:
  """``s = sigmoid((logit(u) + log_alpha) / beta)`` and ``s * (zeta - gamma) + gamma`` (before the clip)."""
  r = (1.0 - u) / u
  inv_beta = 1.0 / hc.beta
  if abs(inv_beta - 1.5) < 1e-12:
    noise_factor = r * jnp.sqrt(r)
  elif inv_beta == 1.0:
    noise_factor = r
  else:
    noise_factor = jnp.power(r, inv_beta)
  s = 1.0 / (1.0 + noise_factor * jnp.exp(jnp.clip(-log_alpha * inv_beta, -40.0, 40.0)))
  return s, s * (hc.zeta - hc.gamma) + hc.gamma


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def gates_from_noise(log_alpha: jax.Array, u: jax.Array, hc: HardConcrete = HardConcrete()) -> jax.Array:
  """The hard-concrete gate for logits ``log_alpha`` and uniform noise ``u``.

  Computes ``sigmoid((logit(u) + log_alpha) / beta)`` as
  ``1 / (1 + ((1 - u) / u) ** (1 / beta) * exp(-log_alpha / beta))``: the
  ``log_alpha`` factor has no task axis (computed once under ``vmap``) and, for
  the default ``beta = 2/3``, the noise factor is ``r * sqrt(r)``, so a sampled
  gate costs no transcendental function per task. The exponent is clipped to
  +-40, where the gate is saturated and its gradient is zero anyway.

  The derivative is written out (``custom_jvp``): ``dz/dlog_alpha =
  (zeta - gamma) / beta * s * (1 - s)`` where ``0 < z < 1`` and 0 elsewhere,
  one multiply-add per gate. Autodiff of the formula above would divide twice
  per gate and task (the reciprocal and ``clip``'s tie-splitting rule), the
  most expensive fusion of the gated sinusoid meta-step. The rule is itself
  differentiable, so inner-loop gate adaptation gets exact second derivatives.

  Args:
    log_alpha: gate logits, any shape.
    u: uniform noise in (0, 1), broadcastable with ``log_alpha``.
    hc: hard-concrete constants.
  """
  return jnp.clip(_sigmoid_and_stretched(log_alpha, u, hc)[1], 0.0, 1.0)


def _gates_from_noise_jvp(hc, primals, tangents):
  log_alpha, u = primals
  log_alpha_dot, u_dot = tangents
  s, stretched = _sigmoid_and_stretched(log_alpha, u, hc)
  gates = jnp.clip(stretched, 0.0, 1.0)
  slope = jnp.where((stretched > 0.0) & (stretched < 1.0), (hc.zeta - hc.gamma) / hc.beta * s * (1.0 - s), 0.0)
  terms = []
  if not isinstance(log_alpha_dot, SymbolicZero):
    terms.append(slope * log_alpha_dot)
  if not isinstance(u_dot, SymbolicZero):  # d logit(u) / du = 1 / (u (1 - u))
    terms.append(slope * u_dot / (u * (1.0 - u)))
  gates_dot = sum(terms[1:], terms[0]) if terms else jnp.zeros_like(gates)
  return gates, jnp.broadcast_to(gates_dot, gates.shape)


gates_from_noise.defjvp(_gates_from_noise_jvp, symbolic_zeros=True)


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


def _has_unit_gates(params, gate_logits) -> bool:
  """Whether some RNN block carries a gated ``unit_scale`` leaf (static: tree structure only)."""
  if rnn.is_rnn_params(params) and isinstance(gate_logits, dict):
    if gate_logits.get(rnn.UNIT_SCALE) is not None:
      return True
  if isinstance(params, dict) and isinstance(gate_logits, dict):
    return any(_has_unit_gates(params[k], gate_logits[k]) for k in params if k in gate_logits)
  return False


def _keep_tree(params, keep):
  """Per-weight survival values with RNN unit gates expanded.

  Args:
    params: parameter tree.
    keep: tree mirroring ``gate_logits`` of per-gate survival values (probability
      of a nonzero gate, or a 0/1 indicator); ``None`` where ungated.

  Returns:
    A tree mirroring ``params``: full-shape survival values for every weight
    some gate touches, ``None`` elsewhere.
  """
  if rnn.is_rnn_params(params) and isinstance(keep, dict) and keep.get(rnn.UNIT_SCALE) is not None:
    own = jax.tree.map(lambda k, p: None if k is None else jnp.broadcast_to(k, p.shape), keep, params,
                       is_leaf=_is_none)
    own[rnn.UNIT_SCALE] = None  # The unit gate is that leaf's own gate: counted once, in the factors.
    factors = rnn.unit_keep_factors(params, keep[rnn.UNIT_SCALE])
    return jax.tree.map(lambda f, o: o if f is None else (f if o is None else o * f), factors, own,
                        is_leaf=_is_none)
  if isinstance(params, dict):
    return {k: _keep_tree(params[k], keep[k]) for k in params}
  return None if keep is None else jnp.broadcast_to(keep, params.shape)


def _num_touched(params, gate_logits) -> int:
  keep = jax.eval_shape(lambda p, g: _keep_tree(p, g), params,
                        jax.tree.map(lambda la: jnp.zeros(la.shape), gate_logits))
  return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(keep))


def unit_sparsity(gate_logits: types.GateLogits, hc: HardConcrete = HardConcrete()) -> float | None:
  """Fraction of hidden-unit gates (``unit_scale`` leaves) that are deterministically 0; None if none."""
  units = [la for path, la in jax.tree_util.tree_leaves_with_path(gate_logits)
           if _path_names(path)[-1] == rnn.UNIT_SCALE]
  if not units:
    return None
  z = jnp.concatenate([deterministic_gates(la, hc).ravel() for la in units])
  return float(jnp.mean(z == 0.0))


def expected_l0(params: types.Params, gate_logits: types.GateLogits,
                hc: HardConcrete = HardConcrete()) -> dict[str, jax.Array]:
  """Closed-form expected number of nonzero gated weights.

  Returns:
    ``{'per_leaf': tree mirroring gate_logits (scalars), 'total': scalar}``; a
    structured gate counts every weight it switches. With RNN unit gates,
    ``per_leaf`` mirrors ``params`` instead (every weight some gate touches).
  """
  if _has_unit_gates(params, gate_logits):
    keep = _keep_tree(params, jax.tree.map(lambda la: prob_nonzero(la, hc), gate_logits))
    per_leaf = jax.tree.map(jnp.sum, keep)
    return {'per_leaf': per_leaf, 'total': sum(jax.tree.leaves(per_leaf), jnp.zeros((), jnp.float32))}
  per_leaf = masked.map_gated(
      lambda p, la: jnp.sum(prob_nonzero(la, hc)) * _group_size(p, la), params, gate_logits)
  total = sum(jax.tree.leaves(per_leaf), jnp.zeros((), jnp.float32))
  return {'per_leaf': per_leaf, 'total': total}


def num_gated_weights(params: types.Params, gate_logits: types.GateLogits) -> int:
  """Number of weights under a gate (a static Python int); with unit gates, every weight one touches."""
  if _has_unit_gates(params, gate_logits):
    return _num_touched(params, gate_logits)
  return sum(jax.tree.leaves(masked.map_gated(lambda p, la: p.size, params, gate_logits)))


def expected_density(params: types.Params, gate_logits: types.GateLogits,
                     hc: HardConcrete = HardConcrete()) -> jax.Array:
  """Expected fraction of gated weights that are nonzero (1 - expected sparsity)."""
  total = num_gated_weights(params, gate_logits)
  if total == 0:
    return jnp.ones((), jnp.float32)
  return expected_l0(params, gate_logits, hc)['total'] / total


def _num_pruned(params, gates) -> jax.Array:
  """Weights whose survival value is exactly 0 given gate values ``gates`` (unit gates expanded)."""
  return sum(jax.tree.leaves(pruned_per_leaf(params, gates)), jnp.zeros((), jnp.int32)).astype(jnp.float32)


def pruned_per_leaf(params: types.Params, gates: types.Masks):
  """Pruned weights per parameter leaf given gate values ``gates`` (e.g. one task's hardened mask).

  Returns a tree mirroring ``params``: for every leaf some gate touches, the
  number of its weights whose survival is exactly 0 (a structured gate counts
  every weight it switches; an RNN unit gate every weight of its unit, see
  ``rnn.unit_keep_factors``); ``None`` for untouched leaves. Works under ``vmap``.
  """
  keep = _keep_tree(params, jax.tree.map(lambda z: (z != 0.0).astype(jnp.float32), gates))
  return jax.tree.map(lambda k: None if k is None else jnp.sum(k == 0.0, dtype=jnp.int32), keep,
                      is_leaf=_is_none)


def realised_sparsity(params: types.Params, gate_logits: types.GateLogits,
                      hc: HardConcrete = HardConcrete()) -> jax.Array:
  """Fraction of gated weights whose deterministic gate is exactly 0."""
  total = num_gated_weights(params, gate_logits)
  if total == 0:
    return jnp.zeros((), jnp.float32)
  if _has_unit_gates(params, gate_logits):
    return _num_pruned(params, deterministic_gates(gate_logits, hc)) / total
  zeros = masked.map_gated(
      lambda p, z: jnp.sum(z == 0.0) * _group_size(p, z), params, deterministic_gates(gate_logits, hc))
  return sum(jax.tree.leaves(zeros), jnp.zeros((), jnp.float32)) / total


def nonzero_params(params: types.Params, gate_logits: types.GateLogits,
                   hc: HardConcrete = HardConcrete()) -> jax.Array:
  """Parameters left after deterministic gating: ungated leaves count in full."""
  if _has_unit_gates(params, gate_logits):
    return masked.count_params(params) - _num_pruned(params, deterministic_gates(gate_logits, hc))
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
  weights are pruned (a structured gate counts all the weights it switches; with
  RNN unit gates the count is the coupled one, found by bisection over the
  number of closed gates, since overlapping gates do not add up). The
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
  if _has_unit_gates(params, gate_logits):
    prune = _coupled_prune(params, gate_logits, leaves, treedef, jnp.argsort(flat, stable=True), need)
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


def _coupled_prune(params, gate_logits, leaves, treedef, order, need: int) -> jax.Array:
  """Closed flags for the fewest lowest-ranked gates that prune ``need`` weights (coupled count)."""
  num_gates = order.shape[0]

  def closed(count):
    return jnp.zeros((num_gates,), bool).at[order].set(jnp.arange(num_gates) < count)

  def pruned(count):
    gates = _unflatten_like(jnp.where(closed(count), 0.0, 1.0), leaves, treedef)
    return _num_pruned(params, gates)

  def body(_, bounds):  # Invariant: pruned(hi) >= need (hi = all gates closed prunes everything).
    lo, hi = bounds
    mid = (lo + hi) // 2
    ok = pruned(mid) >= need
    return jnp.where(ok, lo, mid + 1), jnp.where(ok, mid, hi)

  _, hi = jax.lax.fori_loop(0, max(num_gates, 1).bit_length() + 1, body,
                            (jnp.zeros((), jnp.int32), jnp.asarray(num_gates, jnp.int32)))
  return closed(hi)
