"""Masked LSTM and GRU as pure functions, scanned over time with ``lax.scan``.

Parameter layout (a plain Flax-style param dict; ``G`` gates, ``H`` hidden units)::

  {'input_kernel': [in, G*H], 'recurrent_kernel': [H, G*H], 'bias': [G*H],
   'readout': {'kernel': [H, out], 'bias': [out]},
   'unit_scale': [H]}                       # only with ``unit_scale=True``

Gate blocks are contiguous column blocks of width ``H``; hidden unit ``j`` of
gate block ``k`` lives in column ``k*H + j``. Gate order:

* LSTM (``G = 4``): ``i, f, g, o`` (input, forget, cell candidate, output)::

    c' = sigmoid(f) * c + sigmoid(i) * tanh(g);   h' = sigmoid(o) * tanh(c')

* GRU (``G = 3``): ``r, z, n`` (reset, update, candidate), the Cho et al.
  (2014) form with the reset applied to the hidden state before the recurrent
  matmul (a single bias vector)::

    n = tanh(x W_n + (sigmoid(r) * h) U_n + b_n);   h' = (1 - sigmoid(z)) * n + sigmoid(z) * h

Masks mirror the params (``metaprune_jax.types.Masks``) and are applied once,
before the scan, with ``metaprune_jax.masks.masking.apply_masks``. Per-weight
masks are full-shape leaves (input and recurrent matrices gated separately);
``unit_masks_from_gates`` builds the per-hidden-unit structured masks. A unit
whose gate is 0 has all its gate columns, its recurrent row and its readout row
zeroed: its pre-activations are exactly 0, so (from the zero initial state) its
cell/hidden state stays exactly 0 for both cells and it cannot influence any
output.

**Hidden-unit gates through ``unit_scale``.** ``init_*(..., unit_scale=True)``
adds a per-unit gain leaf ``unit_scale`` ``[H]`` (initialised to 1, trained like
any weight). ``rnn_apply`` expands the (masked) ``unit_scale`` with
``unit_masks_from_gates`` onto every gate matrix, the recurrent rows and the
readout. A hard-concrete gate on that leaf (``masks.hard_concrete`` granularity
``'hidden_unit'``) is therefore one gate per hidden unit that removes the whole
unit, through the library's ordinary leafwise masking; ``masks.sparsity`` and
``masks.harden`` count the weights such a gate takes out when given
``expand_units=unit_keep_factors``.
"""

import jax
import jax.numpy as jnp
from jax import lax

from metaprune_jax import types
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import masking

NUM_GATES = {'lstm': 4, 'gru': 3}
"""Gate count ``G`` per cell name."""
UNIT_SCALE = hard_concrete.UNIT_SCALE
"""Name of the optional per-hidden-unit gain leaf (the hook for hidden-unit gates)."""


def _check_cell(cell: str) -> int:
  if cell not in NUM_GATES:
    raise ValueError(f'cell={cell!r} is not supported; valid cells: {sorted(NUM_GATES)}.')
  return NUM_GATES[cell]


def _init(key: types.PRNGKey, input_size: int, hidden_size: int, output_size: int,
          cell: str, unit_scale: bool) -> types.Params:
  num_gates = _check_cell(cell)
  for name, value in (('input_size', input_size), ('hidden_size', hidden_size),
                      ('output_size', output_size)):
    if value < 1:
      raise ValueError(f'{name} must be a positive integer, got {value}.')
  in_key, rec_key, out_key = jax.random.split(key, 3)
  input_kernel = jax.nn.initializers.lecun_normal()(
      in_key, (input_size, num_gates * hidden_size), jnp.float32)
  # One orthogonal [H, H] block per gate.
  rec_keys = jax.random.split(rec_key, num_gates)
  orthogonal = jax.nn.initializers.orthogonal()
  recurrent_kernel = jnp.concatenate(
      [orthogonal(k, (hidden_size, hidden_size), jnp.float32) for k in rec_keys], axis=1)
  bias = jnp.zeros((num_gates * hidden_size,), jnp.float32)
  if cell == 'lstm':  # Forget-gate bias 1 (Jozefowicz et al., 2015).
    bias = bias.at[hidden_size:2 * hidden_size].set(1.0)
  readout = {
      'kernel': jax.nn.initializers.lecun_normal()(out_key, (hidden_size, output_size),
                                                   jnp.float32),
      'bias': jnp.zeros((output_size,), jnp.float32),
  }
  params = {'input_kernel': input_kernel, 'recurrent_kernel': recurrent_kernel,
            'bias': bias, 'readout': readout}
  if unit_scale:
    params[UNIT_SCALE] = jnp.ones((hidden_size,), jnp.float32)
  return params


def init_lstm(key: types.PRNGKey, input_size: int, hidden_size: int,
              output_size: int, *, unit_scale: bool = False) -> types.Params:
  """LSTM params (gate order ``i, f, g, o``; forget bias 1, other biases 0).

  Returns:
    ``{'input_kernel': [in, 4H], 'recurrent_kernel': [H, 4H], 'bias': [4H],
    'readout': {'kernel': [H, out], 'bias': [out]}}``, plus ``'unit_scale': [H]``
    (ones) when ``unit_scale``.
  """
  return _init(key, input_size, hidden_size, output_size, 'lstm', unit_scale)


def init_gru(key: types.PRNGKey, input_size: int, hidden_size: int,
             output_size: int, *, unit_scale: bool = False) -> types.Params:
  """GRU params (gate order ``r, z, n``; biases 0).

  Returns:
    ``{'input_kernel': [in, 3H], 'recurrent_kernel': [H, 3H], 'bias': [3H],
    'readout': {'kernel': [H, out], 'bias': [out]}}``, plus ``'unit_scale': [H]``
    (ones) when ``unit_scale``.
  """
  return _init(key, input_size, hidden_size, output_size, 'gru', unit_scale)


INIT = {'lstm': init_lstm, 'gru': init_gru}
"""Initialiser per cell name."""


def hidden_size_of(params: types.Params) -> int:
  """``H`` read from ``recurrent_kernel`` ``[H, G*H]``."""
  return params['recurrent_kernel'].shape[0]


def num_gates_of(params: types.Params) -> int:
  """``G`` read from ``bias`` ``[G*H]``."""
  return params['bias'].shape[0] // hidden_size_of(params)


def initial_carry(params: types.Params, batch_size: int, cell: str):
  """Zero state: LSTM ``(c, h)``, each ``[batch, H]``; GRU ``h`` ``[batch, H]``."""
  _check_cell(cell)
  zeros = jnp.zeros((batch_size, hidden_size_of(params)), params['recurrent_kernel'].dtype)
  return (zeros, zeros) if cell == 'lstm' else zeros


def lstm_cell(params: types.Params, carry, x_proj: jax.Array):
  """One LSTM step on already-masked params.

  Args:
    params: (masked) LSTM params.
    carry: ``(c, h)``, each ``[batch, H]``.
    x_proj: input projection ``x @ input_kernel + bias``, ``[batch, 4H]``.

  Returns:
    ``((c', h'), h')``.
  """
  c, h = carry
  pre = x_proj + h @ params['recurrent_kernel']
  i, f, g, o = jnp.split(pre, 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  h = jax.nn.sigmoid(o) * jnp.tanh(c)
  return (c, h), h


def gru_cell(params: types.Params, h: jax.Array, x_proj: jax.Array):
  """One GRU step on already-masked params.

  Args:
    params: (masked) GRU params.
    h: ``[batch, H]``.
    x_proj: input projection ``x @ input_kernel + bias``, ``[batch, 3H]``.

  Returns:
    ``(h', h')``.
  """
  hidden = h.shape[-1]
  u_rz = params['recurrent_kernel'][:, :2 * hidden]
  u_n = params['recurrent_kernel'][:, 2 * hidden:]
  x_r, x_z, x_n = jnp.split(x_proj, 3, axis=-1)
  h_r, h_z = jnp.split(h @ u_rz, 2, axis=-1)
  r = jax.nn.sigmoid(x_r + h_r)
  z = jax.nn.sigmoid(x_z + h_z)
  n = jnp.tanh(x_n + (r * h) @ u_n)
  h = (1.0 - z) * n + z * h
  return h, h


def input_projection(params: types.Params, inputs: jax.Array) -> jax.Array:
  """``inputs @ input_kernel + bias``: ``[..., in] -> [..., G*H]`` (all steps in one matmul)."""
  return inputs @ params['input_kernel'] + params['bias']


def readout(params: types.Params, hidden: jax.Array) -> jax.Array:
  """``[..., H] -> [..., out]``."""
  return hidden @ params['readout']['kernel'] + params['readout']['bias']


def _check_params(params: types.Params, cell: str) -> None:
  num_gates = _check_cell(cell)
  hidden = hidden_size_of(params)
  if params['bias'].shape != (num_gates * hidden,):
    raise ValueError(f"params do not match cell={cell!r}: bias has shape "
                     f"{params['bias'].shape}, expected ({num_gates * hidden},).")


def effective_params(params: types.Params, masks: types.Masks | None = None) -> types.Params:
  """``params`` with ``masks`` applied and, if present, ``unit_scale`` expanded onto every unit's weights."""
  params = masking.apply_masks(params, masks)
  if UNIT_SCALE in params:
    params = masking.apply_masks(params, unit_masks_from_gates(params, params[UNIT_SCALE]))
  return params


def hidden_states(params: types.Params, inputs: jax.Array, masks: types.Masks | None = None,
                  *, cell: str) -> tuple[types.Params, jax.Array]:
  """Runs the masked cell over time.

  Args:
    params: params from ``init_lstm`` / ``init_gru``.
    inputs: ``[batch, time, in]``.
    masks: ``None`` or a mask tree mirroring ``params``.
    cell: ``'lstm'`` or ``'gru'``.

  Returns:
    ``(effective params, hidden states [time, batch, H])``.
  """
  _check_cell(cell)
  if inputs.ndim != 3:
    raise ValueError(f'inputs must be [batch, time, in], got shape {inputs.shape}.')
  _check_params(params, cell)
  params = effective_params(params, masks)
  x_proj = jnp.swapaxes(input_projection(params, inputs), 0, 1)  # [time, batch, G*H]
  step = lstm_cell if cell == 'lstm' else gru_cell
  _, hs = lax.scan(lambda carry, x: step(params, carry, x),
                   initial_carry(params, inputs.shape[0], cell), x_proj)
  return params, hs


def final_hidden(params: types.Params, inputs: jax.Array, masks: types.Masks | None = None,
                 *, cell: str) -> jax.Array:
  """The last hidden state ``[batch, H]`` (an embedding of the whole sequence)."""
  return hidden_states(params, inputs, masks, cell=cell)[1][-1]


def rnn_apply(params: types.Params, inputs: jax.Array, masks: types.Masks | None = None,
              *, cell: str, last_only: bool = False) -> jax.Array:
  """Runs a masked LSTM/GRU over ``inputs`` and reads out every (or the last) step.

  Args:
    params: params from ``init_lstm`` / ``init_gru``.
    inputs: ``[batch, time, in]``.
    masks: ``None`` or a mask tree mirroring ``params``.
    cell: ``'lstm'`` or ``'gru'``.
    last_only: return only the readout of the final step.

  Returns:
    ``[batch, time, out]``, or ``[batch, out]`` when ``last_only``.
  """
  params, hs = hidden_states(params, inputs, masks, cell=cell)
  if last_only:
    return readout(params, hs[-1])
  return readout(params, jnp.swapaxes(hs, 0, 1))


def unit_masks_from_gates(params: types.Params, unit_gates: jax.Array,
                          cell: str | None = None) -> types.Masks:
  """Structured masks that gate whole hidden units.

  Unit ``j``'s gate multiplies its ``G`` columns (``k*H + j``) of the input
  kernel, recurrent kernel and bias, its recurrent row ``j`` and its readout
  row ``j``. Gates may be hard (0/1) or soft (e.g. hard-concrete samples).
  Combine with per-weight masks by multiplying leaves.

  Args:
    params: LSTM/GRU params.
    unit_gates: ``[H]``.
    cell: ``'lstm'``, ``'gru'`` or None (``G`` read from the params).

  Returns:
    ``{'input_kernel': [1, G*H], 'recurrent_kernel': [H, G*H], 'bias': [G*H],
    'readout': {'kernel': [H, 1], 'bias': None}}`` (and ``'unit_scale': None``
    when the params have that leaf).
  """
  hidden = hidden_size_of(params)
  if cell is None:
    num_gates = num_gates_of(params)
  else:
    num_gates = _check_cell(cell)
    _check_params(params, cell)
  if unit_gates.shape != (hidden,):
    raise ValueError(f'unit_gates must have shape [H]=({hidden},), got {unit_gates.shape}.')
  columns = jnp.tile(unit_gates, num_gates)  # [G*H]
  masks = {
      'input_kernel': columns[None, :],
      'recurrent_kernel': unit_gates[:, None] * columns[None, :],
      'bias': columns,
      'readout': {'kernel': unit_gates[:, None], 'bias': None},
  }
  if UNIT_SCALE in params:
    masks[UNIT_SCALE] = None
  return masks


def unit_keep_factors(params: types.Params, unit_keep: jax.Array) -> types.Masks:
  """Per-weight survival factors of independent hidden-unit gates.

  With ``unit_keep[j]`` the probability that unit ``j``'s gate is nonzero (or a
  0/1 indicator), a weight survives the unit gates with probability: its column
  unit's for input-kernel columns and bias; its row unit's for readout rows;
  row unit times column unit for the recurrent kernel, except where row and
  column are the same unit (then that unit's alone); ``unit_keep`` itself for
  ``unit_scale``. This is the ``expand_units`` that ``masks.sparsity`` counters and
  ``masks.harden`` take to count what a unit gate removes.

  Args:
    params: LSTM/GRU params with a ``unit_scale`` leaf.
    unit_keep: ``[H]`` values in ``[0, 1]``.

  Returns:
    A tree mirroring ``params`` with full-shape factors (``None`` for the readout bias).
  """
  hidden, num_gates = hidden_size_of(params), num_gates_of(params)
  factors = unit_masks_from_gates(params, unit_keep)
  same_unit = jnp.arange(hidden)[:, None] == (jnp.arange(num_gates * hidden) % hidden)[None, :]
  factors['recurrent_kernel'] = jnp.where(same_unit, jnp.tile(unit_keep, num_gates)[None, :],
                                          factors['recurrent_kernel'])
  factors[UNIT_SCALE] = unit_keep
  return jax.tree.map(lambda p, f: None if f is None else jnp.broadcast_to(f, p.shape), params, factors,
                      is_leaf=lambda x: x is None)

