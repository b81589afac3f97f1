"""Per-channel symmetric int8 quantisation: error bounds, zero channels, int8 matmuls and the STE gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.export import quantize
from tests import test_utils


def _weight(shape, key=0, scale_per_channel=True):
  w = jax.random.normal(jax.random.key(key), shape)
  if scale_per_channel:  # Channels of very different magnitudes, so one shared scale would be wrong.
    w = w * jnp.logspace(-3, 1, shape[-1])
  return w


@pytest.mark.parametrize('shape,channel_axis', [((576, 64), -1), ((40, 40), 1), ((3, 3, 8, 16), -1),
                                                ((64, 5), 0), ((7,), 0)])
def test_error_is_at_most_half_a_step_per_channel(shape, channel_axis):
  w = _weight(shape)
  qw = quantize.quantize_weight(w, channel_axis)
  assert qw.qvalue.dtype == jnp.int8 and qw.qvalue.shape == w.shape
  assert qw.scale.dtype == jnp.float32
  expected_scale_shape = [1] * w.ndim
  expected_scale_shape[channel_axis] = w.shape[channel_axis]
  assert qw.scale.shape == tuple(expected_scale_shape)
  error = np.abs(np.asarray(w - quantize.dequantize(qw)))
  bound = np.broadcast_to(np.asarray(qw.scale) / 2, w.shape) * (1 + 1e-5)
  assert np.all(error <= bound)


def test_scales_are_channel_absmax_over_127_and_the_range_is_symmetric():
  w = _weight((576, 64))
  qw = quantize.quantize_weight(w)
  absmax = np.abs(np.asarray(w)).max(axis=0, keepdims=True)
  test_utils.assert_close(qw.scale, absmax / 127, rtol=1e-6, atol=0)
  q = np.asarray(qw.qvalue)
  assert q.min() >= -127 and q.max() <= 127
  assert np.all(np.abs(q).max(axis=0) == 127)  # Every channel uses its full range.
  # qwix's default grid reaches -128; ours is symmetric even when the channel's extreme is negative.
  assert int(quantize.quantize_weight(jnp.array([[-2.0], [1.0]])).qvalue.min()) == -127


def test_zero_channels_dequantize_to_exact_zeros():
  w = _weight((8, 4)).at[:, 1].set(0.0).at[:, 3].set(1e-30)
  qw = quantize.quantize_weight(w)
  dq = np.asarray(quantize.dequantize(qw))
  test_utils.assert_all_finite(dq)
  assert np.all(dq[:, 1] == 0.0) and not np.any(np.signbit(dq[:, 1]))
  test_utils.assert_equal(qw.scale[0, 1], 1.0)  # qwix's rule for a (near-)zero absmax.
  assert np.all(np.abs(dq[:, 3]) <= 1e-30)
  all_zero = quantize.quantize_weight(jnp.zeros((5, 3)))
  test_utils.assert_equal(quantize.dequantize(all_zero), np.zeros((5, 3)))


def test_quantize_weight_under_jit_equals_eager():
  w = _weight((40, 40))
  eager = quantize.quantize_weight(w)
  jitted = jax.jit(quantize.quantize_weight, static_argnames='channel_axis')(w, channel_axis=-1)
  test_utils.assert_equal(jitted.qvalue, eager.qvalue)
  test_utils.assert_close(jitted.scale, eager.scale, rtol=1e-6, atol=0)  # XLA may fold absmax * c / 127.5.


def _weight_only_bound(x, qw):
  """|x @ (w - dq(w))| <= sum_i |x_i| * scale_j / 2."""
  return np.abs(np.asarray(x)).sum(-1, keepdims=True) * np.asarray(qw.scale)[0] / 2


def _dynamic_bound(x, w, qw):
  """|x w - dq(x) dq(w)| <= sum_i |x_i - dq(x_i)| |w_ij| + |dq(x_i)| |w_ij - dq(w_ij)|."""
  x, w = np.asarray(x), np.asarray(w)
  x_step = np.abs(x).max(-1, keepdims=True) / 127
  dq_x_abs = np.abs(x) + x_step / 2
  return x_step / 2 * np.abs(w).sum(0) + dq_x_abs.sum(-1, keepdims=True) * np.asarray(qw.scale)[0] / 2


@pytest.mark.parametrize('x_shape', [(1, 576), (600, 576), (2, 3, 576)])
def test_quantized_dot_is_within_the_quantisation_bound(x_shape):
  w = _weight((576, 64), key=1)
  x = jax.random.normal(jax.random.key(2), x_shape)
  qw = quantize.quantize_weight(w)
  exact = np.asarray(jnp.matmul(x, w, precision='highest'))
  slack = 1e-4 * (np.abs(np.asarray(x)) @ np.abs(np.asarray(w)))  # float32 summation error.
  weight_only = np.asarray(quantize.quantized_dot(x, qw, 'weight_only'))
  dynamic = np.asarray(quantize.quantized_dot(x, qw, 'dynamic_int8'))
  assert weight_only.shape == dynamic.shape == x_shape[:-1] + (64,)
  assert weight_only.dtype == dynamic.dtype == np.float32
  assert np.all(np.abs(weight_only - exact) <= _weight_only_bound(x, qw) + slack)
  assert np.all(np.abs(dynamic - exact) <= _dynamic_bound(x, w, qw) + slack)
  assert not np.allclose(dynamic, weight_only, rtol=0, atol=0)  # The activations really were quantized.


def test_dynamic_int8_runs_an_int8_matmul_with_int32_accumulation():
  qw = quantize.quantize_weight(_weight((64, 5)))
  hlo = jax.jit(functools.partial(quantize.quantized_dot, mode='dynamic_int8')).lower(
      jnp.ones((3, 64)), qw).as_text()
  dots = [line for line in hlo.splitlines() if 'dot_general' in line]
  assert dots and all('xi8>' in line and 'xi32>' in line for line in dots), dots


def test_dynamic_int8_of_int8_representable_inputs_is_exact():
  # x whose rows are already on their int8 grid: only the weight's rounding remains, accumulated exactly.
  qw = quantize.quantize_weight(_weight((40, 40), key=3))
  x = jnp.asarray(np.random.default_rng(0).integers(-127, 128, (4, 40)), jnp.float32).at[:, 0].set(127.0)
  expected = np.asarray(x, np.float64) @ np.asarray(quantize.dequantize(qw), np.float64)
  test_utils.assert_close(quantize.quantized_dot(x, qw, 'dynamic_int8'), expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize('mode', quantize.MODES)
def test_quantized_dot_jits_and_matches_eager(mode):
  qw = quantize.quantize_weight(_weight((40, 40)))
  x = jax.random.normal(jax.random.key(4), (25, 40))
  jitted = jax.jit(quantize.quantized_dot, static_argnames='mode')(x, qw, mode=mode)
  test_utils.assert_close(jitted, quantize.quantized_dot(x, qw, mode), rtol=1e-6, atol=1e-6)


def test_quantized_dot_rejects_bad_inputs():
  qw = quantize.quantize_weight(_weight((40, 40)))
  with pytest.raises(ValueError, match='weight_only'):
    quantize.quantized_dot(jnp.ones((2, 40)), qw, 'int4')
  with pytest.raises(ValueError, match='input size 40'):
    quantize.quantized_dot(jnp.ones((2, 39)), qw)
  with pytest.raises(ValueError, match='channel_axis=-1'):
    quantize.quantized_dot(jnp.ones((2, 40)), quantize.quantize_weight(_weight((40, 40)), channel_axis=0))
  with pytest.raises(ValueError, match='out of range'):
    quantize.quantize_weight(jnp.ones((4, 4)), channel_axis=2)
  with pytest.raises(ValueError, match='float weight'):
    quantize.quantize_weight(jnp.ones((4, 4), jnp.int32))


def test_fake_quantize_forward_is_the_dequantized_weight():
  w = _weight((3, 3, 8, 16))
  test_utils.assert_equal(quantize.fake_quantize(w), quantize.dequantize(quantize.quantize_weight(w)))
  test_utils.assert_equal(quantize.fake_quantize(w, 2), quantize.dequantize(quantize.quantize_weight(w, 2)))


def test_fake_quantize_has_the_straight_through_gradient():
  w = _weight((40, 40))
  cotangent = jax.random.normal(jax.random.key(5), w.shape)
  loss = lambda v: jnp.sum(quantize.fake_quantize(v, -1) * cotangent)
  test_utils.assert_equal(jax.grad(loss)(w), cotangent)
  test_utils.assert_equal(jax.jit(jax.grad(loss))(w), cotangent)
  test_utils.assert_equal(jax.jacfwd(lambda v: quantize.fake_quantize(v, 0))(w[:3, :2]),
                          jnp.eye(6).reshape(3, 2, 3, 2))
  # Second order (MAML's outer gradient through the inner step) sees the identity too.
  inner = lambda v: v - 0.1 * jax.grad(lambda u: jnp.sum(quantize.fake_quantize(u) ** 2))(v)
  assert np.all(np.isfinite(np.asarray(jax.grad(lambda v: jnp.sum(inner(v)))(w))))
