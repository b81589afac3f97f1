"""Keyed hash noise: uniform, independent across keys and indices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.masks import noise


def test_hash_noise_is_uniform_in_open_interval():
  u = np.asarray(noise.uniform(jax.random.key(0), (200_000,)))
  assert u.min() > 0.0 and u.max() < 1.0
  counts, _ = np.histogram(u, bins=20, range=(0, 1))
  expected = len(u) / 20
  chi2 = np.sum((counts - expected) ** 2 / expected)
  assert chi2 < 43.8  # 99.9% quantile of chi^2 with 19 degrees of freedom.
  np.testing.assert_allclose(u.var(), 1 / 12, rtol=1e-2)


@pytest.mark.parametrize('dtype', [jnp.float32, np.float64])
def test_extreme_bit_patterns_map_strictly_inside_unit_interval(dtype):
  # All ones used to map to (2**24 - 1 + 0.5) / 2**24, which rounds to exactly 1.0 in float32.
  bits = jnp.array([0x00000000, 0x000001FF, 0xFFFFFE00, 0xFFFFFFFF], dtype=jnp.uint32)
  with jax.enable_x64(dtype == np.float64):
    u = np.asarray(noise._bits_to_open_unit(bits, dtype))
  expected = np.array([2.0**-24, 2.0**-24, 1 - 2.0**-24, 1 - 2.0**-24])
  np.testing.assert_array_equal(u, expected.astype(u.dtype))
  assert np.all(u > 0.0) and np.all(u < 1.0)


def test_hash_noise_has_no_serial_or_cross_key_correlation():
  a = np.asarray(noise.uniform(jax.random.key(1), (100_000,)))
  b = np.asarray(noise.uniform(jax.random.key(2), (100_000,)))
  assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 0.02
  assert abs(np.corrcoef(a, b)[0, 1]) < 0.02
  assert not np.allclose(a, b)


def test_same_key_same_noise_and_shapes():
  key = jax.random.key(5)
  np.testing.assert_array_equal(noise.uniform(key, (4, 3)), noise.uniform(key, (4, 3)))
  assert noise.uniform(key, (2, 3, 4)).shape == (2, 3, 4)


def test_vmap_over_keys_matches_loop():
  keys = jax.random.split(jax.random.key(7), 3)
  batched = jax.vmap(lambda k: noise.uniform(k, (6,)), in_axes=(0,))(keys)
  for i in range(3):
    np.testing.assert_array_equal(batched[i], noise.uniform(keys[i], (6,)))


def test_unknown_method_is_rejected():
  with pytest.raises(ValueError, match='method'):
    noise.uniform(jax.random.key(0), (3,), method='dice')
