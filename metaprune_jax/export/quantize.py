"""Post-training per-channel symmetric int8 weight quantisation (with qwix), int8 matmuls and fake quantisation.

A weight ``w`` is stored as ``qvalue`` (int8, same shape, in [-127, 127]) and ``scale`` (float32, one per
channel, keepdims) with ``w ~= qvalue * scale`` and ``scale = absmax(channel) / 127``, so every entry is off by
at most ``scale / 2``. An all-zero channel gets ``scale = 1`` (qwix's rule for any ``absmax / 127`` below
``sqrt(float32 tiny)``) and dequantizes to exact zeros, never NaN.

Why a calibration factor: qwix's plain ``'absmax'`` divides by 127.5 (its int8 bound is ``qmax + 0.5``), so the
most negative entry of a channel rounds to -128. ``'absmax,127.5/127'`` scales absmax by 127.5 / 127 first,
i.e. ``scale = absmax / 127``: the textbook symmetric grid, [-127, 127], a zero point of exactly 0.

``quantized_dot(x, qw, mode)`` computes ``x [..., in] @ w [in, out]`` from a per-output-channel ``qw``:

* ``'weight_only'``: ``qwix.dot_general`` with a float ``x``, which dequantizes ``w`` and runs a float matmul
  (qwix's rule whenever an operand is float; XLA fuses the dequantize into the dot);
* ``'dynamic_int8'``: ``x`` quantized per row (symmetric, absmax, dynamic), then ``qwix.dot_general`` of two
  QArrays, which lowers to an int8 x int8 ``dot_general`` with int32 accumulation followed by the two rescales.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import qwix

MODES = ('weight_only', 'dynamic_int8')
INT8_MAX = 127
# absmax * (127.5 / 127) / 127.5 = absmax / 127: see the module docstring.
_CALIBRATION = f'absmax,{127.5 / INT8_MAX!r}'
# int8 x int8 products are at most 127^2; int32 sums of more terms than this could overflow.
MAX_INT8_CONTRACTION = (2**31 - 1) // INT8_MAX**2


class QuantizedWeight(NamedTuple):
  """A per-channel symmetric int8 weight.

  Attributes:
    qvalue: int8, the weight's shape, in [-127, 127].
    scale: float32, the weight's rank with 1 on every axis but the channel axis (keepdims).
  """
  qvalue: jax.Array
  scale: jax.Array


def _symmetric_int8(array: jax.Array, channelwise_axes: tuple[int, ...]) -> qwix.QArray:
  """qwix's symmetric absmax int8 QArray of a float32 ``array`` with one scale per index of ``channelwise_axes``."""
  return qwix.quantize(array.astype(jnp.float32), jnp.int8, channelwise_axes=channelwise_axes,
                       calibration_method=_CALIBRATION)


def _as_qarray(qw: QuantizedWeight) -> qwix.QArray:
  return qwix.QArray(qvalue=qw.qvalue, scale=qw.scale)


def quantize_weight(w: jax.Array, channel_axis: int = -1) -> QuantizedWeight:
  """Quantizes ``w`` to int8 with one symmetric absmax scale per index of ``channel_axis``.

  Args:
    w: ``[...]`` float weight, e.g. a Dense kernel ``[in, out]`` or a conv kernel ``[kh, kw, in, out]``.
    channel_axis: the axis with its own scales (-1: output channels of a Dense or conv kernel).

  Returns:
    ``QuantizedWeight(qvalue int8 [...], scale float32 [1, ..., channels, ..., 1])``.
  """
  w = jnp.asarray(w)
  if w.ndim == 0:
    raise ValueError('w is a scalar; quantize_weight needs an array with a channel axis')
  if not -w.ndim <= channel_axis < w.ndim:
    raise ValueError(f'channel_axis={channel_axis} is out of range for w of shape {w.shape}; '
                     f'pass an axis in [{-w.ndim}, {w.ndim - 1}]')
  if not jnp.issubdtype(w.dtype, jnp.floating):
    raise ValueError(f'w has dtype {w.dtype}; quantize a float weight')
  qarray = _symmetric_int8(w, (channel_axis % w.ndim,))
  return QuantizedWeight(qarray.qvalue, qarray.scale)


def dequantize(qw: QuantizedWeight) -> jax.Array:
  """``qvalue * scale`` as float32, the weight's shape."""
  return qwix.dequantize(_as_qarray(qw)).astype(jnp.float32)


def quantized_dot(x: jax.Array, qw: QuantizedWeight, mode: str = 'weight_only') -> jax.Array:
  """``x @ w`` for a per-output-channel int8 ``w``.

  Args:
    x: ``[..., in]`` float activations.
    qw: ``quantize_weight(w, channel_axis=-1)`` of a kernel ``w [in, out]`` (scale ``[1, out]``).
    mode: ``'weight_only'`` (float activations, dequantized weight) or ``'dynamic_int8'`` (activations
      quantized per row at call time, int8 x int8 -> int32 matmul, then rescaled). Static under jit.

  Returns:
    ``[..., out]`` float32.
  """
  if mode not in MODES:
    raise ValueError(f'unknown quantized_dot mode {mode!r}; expected one of {MODES}')
  if qw.qvalue.ndim != 2 or qw.scale.shape != (1, qw.qvalue.shape[1]):
    raise ValueError(f'qw has qvalue {qw.qvalue.shape} and scale {qw.scale.shape}; quantized_dot needs a kernel '
                     '[in, out] quantized per output channel: quantize_weight(w, channel_axis=-1)')
  if x.shape[-1:] != qw.qvalue.shape[:1]:
    raise ValueError(f'x has shape {x.shape} but the kernel is {qw.qvalue.shape}; x must end in the kernel\'s '
                     f'input size {qw.qvalue.shape[0]}')
  dimension_numbers = (((x.ndim - 1,), (0,)), ((), ()))
  if mode == 'weight_only':
    return qwix.dot_general(x.astype(jnp.float32), _as_qarray(qw), dimension_numbers).astype(jnp.float32)
  if x.shape[-1] > MAX_INT8_CONTRACTION:
    raise ValueError(f'x contracts over {x.shape[-1]} entries; int32 accumulation of int8 products is exact only '
                     f'up to {MAX_INT8_CONTRACTION}: use mode="weight_only"')
  qx = _symmetric_int8(x, tuple(range(x.ndim - 1)))  # One scale per row: [..., 1].
  return qwix.dot_general(qx, _as_qarray(qw), dimension_numbers,
                          preferred_element_type=jnp.float32).astype(jnp.float32)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def fake_quantize(w: jax.Array, channel_axis: int = -1) -> jax.Array:
  """``dequantize(quantize_weight(w, channel_axis))`` with a straight-through gradient (identity).

  For quantisation-aware training: the forward pass sees the int8 grid exactly, the backward pass treats the
  rounding as the identity (no clipping: absmax calibration never clips).

  Args:
    w: ``[...]`` float weight.
    channel_axis: the axis with its own scales.

  Returns:
    float32 ``[...]``, the dequantized weight.
  """
  return dequantize(quantize_weight(w, channel_axis))


@fake_quantize.defjvp
def _fake_quantize_jvp(channel_axis, primals, tangents):
  (w,), (w_dot,) = primals, tangents
  return fake_quantize(w, channel_axis), w_dot.astype(jnp.float32)
