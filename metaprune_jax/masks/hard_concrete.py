"""Hard-concrete L0 gates (Louizos, Welling & Kingma, 2018): the distribution.

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

Recurrent nets: ``'weight'`` also gates the ``input_kernel`` and
``recurrent_kernel`` leaves, one gate per weight each. Granularity
``'hidden_unit'`` puts one gate per hidden unit on a ``UNIT_SCALE`` leaf
(``[H]``), which the net expands onto every weight of the unit;
``'weight+hidden_unit'`` does both. Counting what such gates remove is
``metaprune_jax.masks.sparsity`` (given the net's ``expand_units``); pruning to a
target is ``metaprune_jax.masks.harden``.
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

GRANULARITIES = ('weight', 'out_unit', 'in_unit', 'hidden_unit', 'weight+hidden_unit')
_LEAF_GRANULARITIES = ('weight', 'out_unit', 'in_unit')
_KERNEL_NAMES = ('kernel', 'input_kernel', 'recurrent_kernel')
UNIT_SCALE = 'unit_scale'
"""Name of the per-hidden-unit gain leaf of recurrent nets (the hook for hidden-unit gates)."""


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


def path_names(path) -> list[str]:
  """The key names along a pytree path (dict keys or attribute names), e.g. ``['Dense_0', 'kernel']``."""
  return [str(getattr(k, 'key', getattr(k, 'name', k))) for k in path]


def default_granularity(granularity: str = 'weight', dense_layers: Sequence[str] = ()):
  """Gates every kernel leaf at ``granularity``, except modules named in ``dense_layers``.

  Kernel leaves are those named ``kernel``, ``input_kernel`` or ``recurrent_kernel``
  (rank >= 2). ``'hidden_unit'`` gates only ``UNIT_SCALE`` leaves of rank 1 (one gate
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
    if names[-1] == UNIT_SCALE and leaf.ndim == 1:
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
    granularity = spec(path_names(path), leaf)
    if granularity is None:
      return None
    return jnp.full(gate_shape(leaf.shape, granularity), init_logit, jnp.float32)
  return jax.tree_util.tree_map_with_path(leaf_logits, params)


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
