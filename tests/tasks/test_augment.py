"""Tests for metaprune_jax.tasks.augment."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.tasks import augment
from metaprune_jax.types import TaskBatch
from tests import test_utils


def _shifted(image, dy, dx):
  """``image`` ``[H, W, C]`` moved down by ``dy`` and right by ``dx``, zero-filled (numpy reference)."""
  out = np.zeros_like(image)
  height, width = image.shape[:2]
  for i, j in itertools.product(range(height), range(width)):
    if 0 <= i - dy < height and 0 <= j - dx < width:
      out[i, j] = image[i - dy, j - dx]
  return out


def _offset(original, shifted, max_shift):
  """The unique ``(dy, dx)`` that maps ``original`` to ``shifted`` (asserts there is exactly one)."""
  matches = [(dy, dx) for dy, dx in itertools.product(range(-max_shift, max_shift + 1), repeat=2)
             if np.array_equal(_shifted(original, dy, dx), shifted)]
  assert len(matches) == 1, matches
  return matches[0]


def _distinct_images(n, size=7, channels=2):
  """Images with every pixel distinct and nonzero, so each shift has a unique result."""
  return (np.arange(n * size * size * channels).reshape(n, size, size, channels) + 1).astype(np.float32)


def test_each_image_is_a_zero_filled_translation_within_max_shift():
  images = _distinct_images(40)
  out = np.asarray(jax.jit(augment.random_shifts, static_argnums=2)(jax.random.key(0), images, 2))
  assert out.shape == images.shape and out.dtype == images.dtype
  offsets = [_offset(images[k], out[k], 2) for k in range(len(images))]
  assert all(max(abs(dy), abs(dx)) <= 2 for dy, dx in offsets)
  assert len(set(offsets)) > 10  # Independent offsets per image, not one for the batch.


def test_offsets_cover_the_window_uniformly():
  # One nonzero pixel in the middle: its new position is the offset.
  images = np.zeros((5000, 9, 9, 1), np.uint8)
  images[:, 4, 4, 0] = 255
  out = np.asarray(augment.random_shifts(jax.random.key(1), jnp.asarray(images), 2))
  assert out.dtype == np.uint8
  rows, cols = np.nonzero(out[..., 0].reshape(5000, 81) == 255)
  assert len(rows) == 5000
  dy, dx = cols // 9 - 4, cols % 9 - 4
  counts = np.bincount((dy + 2) * 5 + (dx + 2), minlength=25)
  expected = 5000 / 25
  chi2 = np.sum((counts - expected) ** 2 / expected)
  assert chi2 < 52.6  # 99.9% quantile of chi-square with 24 degrees of freedom.


def test_leading_axes_are_kept_and_zero_shift_is_the_identity():
  images = jnp.asarray(_distinct_images(12).reshape(3, 4, 7, 7, 2))
  out = augment.random_shifts(jax.random.key(2), images, 1)
  assert out.shape == images.shape
  flat_in, flat_out = np.asarray(images).reshape(12, 7, 7, 2), np.asarray(out).reshape(12, 7, 7, 2)
  for k in range(12):
    _offset(flat_in[k], flat_out[k], 1)
  assert augment.random_shifts(jax.random.key(2), images, 0) is images


def test_shift_episodes_shifts_support_and_query_independently():
  support, query = _distinct_images(16), _distinct_images(16) + 10_000
  tasks = TaskBatch(support.reshape(2, 8, 7, 7, 2), jnp.zeros((2, 8), jnp.int32),
                    query.reshape(2, 8, 7, 7, 2), jnp.ones((2, 8), jnp.int32))
  out = augment.shift_episodes(jax.random.key(3), tasks, 2)
  test_utils.assert_equal(out.support_targets, tasks.support_targets)
  test_utils.assert_equal(out.query_targets, tasks.query_targets)
  s_off = [_offset(support[k], np.asarray(out.support_inputs).reshape(16, 7, 7, 2)[k], 2) for k in range(16)]
  q_off = [_offset(query[k], np.asarray(out.query_inputs).reshape(16, 7, 7, 2)[k], 2) for k in range(16)]
  assert s_off != q_off
  assert augment.shift_episodes(jax.random.key(3), tasks, 0) is tasks


@pytest.mark.parametrize('max_shift, match', [(-1, 'non-negative int'), (1.5, 'non-negative int'),
                                              (True, 'non-negative int'), (4, 'below half the image size')])
def test_bad_max_shift_is_refused(max_shift, match):
  with pytest.raises(ValueError, match=match):
    augment.random_shifts(jax.random.key(0), jnp.zeros((2, 7, 7, 1)), max_shift)
