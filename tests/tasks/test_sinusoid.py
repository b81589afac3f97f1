"""Sinusoid tasks: shapes, ranges, and y = A sin(x - phi)."""

import jax
import numpy as np

from metaprune_jax.tasks import sinusoid


def test_shapes_ranges_and_determinism():
  key = jax.random.key(0)
  tasks = sinusoid.sample_sinusoid_tasks(key, num_tasks=50, num_support=5, num_query=7)
  assert tasks.support_inputs.shape == (50, 5, 1) and tasks.query_targets.shape == (50, 7, 1)
  x = np.concatenate([tasks.support_inputs, tasks.query_inputs], axis=1)
  assert x.min() >= -5.0 and x.max() <= 5.0
  y = np.concatenate([tasks.support_targets, tasks.query_targets], axis=1)
  assert np.abs(y).max() <= 5.0
  again = sinusoid.sample_sinusoid_tasks(key, num_tasks=50, num_support=5, num_query=7)
  np.testing.assert_array_equal(tasks.query_targets, again.query_targets)


def test_every_task_is_one_sinusoid_with_amplitude_and_phase_in_range():
  tasks = sinusoid.sample_sinusoid_tasks(jax.random.key(1), num_tasks=20, num_support=30, num_query=30)
  x = np.concatenate([tasks.support_inputs, tasks.query_inputs], axis=1)[..., 0].astype(np.float64)
  y = np.concatenate([tasks.support_targets, tasks.query_targets], axis=1)[..., 0].astype(np.float64)
  for xi, yi in zip(x, y):
    # y = a sin x + b cos x with a = A cos(phi), b = -A sin(phi): solve by least squares.
    (a, b), *_ = np.linalg.lstsq(np.stack([np.sin(xi), np.cos(xi)], 1), yi, rcond=None)
    amplitude, phase = np.hypot(a, b), np.arctan2(-b, a)
    np.testing.assert_allclose(amplitude * np.sin(xi - phase), yi, atol=1e-4)
    assert 0.1 - 1e-4 <= amplitude <= 5.0 + 1e-4
    assert -1e-4 <= phase <= np.pi + 1e-4


def test_tasks_differ_and_jit_matches_eager():
  key = jax.random.key(2)
  eager = sinusoid.sample_sinusoid_tasks(key, num_tasks=3, num_support=4, num_query=4)
  jitted = jax.jit(sinusoid.sample_sinusoid_tasks, static_argnames=('num_tasks', 'num_support', 'num_query'))(
      key, num_tasks=3, num_support=4, num_query=4)
  np.testing.assert_allclose(eager.support_targets, jitted.support_targets, rtol=1e-6, atol=1e-6)
  assert not np.allclose(eager.support_targets[0], eager.support_targets[1])
