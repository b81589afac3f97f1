"""Tests for metaprune_jax.tasks.sequence."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax import types
from metaprune_jax.tasks import sequence
from tests import test_utils

SIZES = dict(num_support=5, num_query=3, context_length=12, horizon=4)


def _sample(key, kind, num_tasks=4, **overrides):
  return sequence.sample_sequence_tasks(key, num_tasks=num_tasks, kind=kind,
                                        **{**SIZES, **overrides})


@pytest.mark.parametrize('kind', sequence.KINDS)
def test_shapes_and_dtype(kind):
  batch = _sample(jax.random.key(0), kind)
  assert isinstance(batch, types.TaskBatch)
  assert batch.support_inputs.shape == (4, 5, 12, 1)
  assert batch.support_targets.shape == (4, 5, 4, 1)
  assert batch.query_inputs.shape == (4, 3, 12, 1)
  assert batch.query_targets.shape == (4, 3, 4, 1)
  assert all(x.dtype == jnp.float32 for x in batch)
  test_utils.assert_all_finite(batch)


@pytest.mark.parametrize('kind', sequence.KINDS)
def test_deterministic_per_key(kind):
  first = _sample(jax.random.key(1), kind)
  test_utils.assert_trees_all_equal(_sample(jax.random.key(1), kind), first)
  assert not np.allclose(_sample(jax.random.key(2), kind).support_inputs, first.support_inputs)


@pytest.mark.parametrize('kind', sequence.KINDS)
def test_tasks_and_examples_differ(kind):
  batch = _sample(jax.random.key(3), kind)
  x = np.asarray(batch.support_inputs[..., 0])  # [tasks, n, time]
  for i in range(x.shape[0]):
    for j in range(i + 1, x.shape[0]):
      assert np.abs(x[i] - x[j]).max() > 1e-2, f'tasks {i} and {j} coincide'
  assert np.abs(x[:, 0] - x[:, 1]).max() > 1e-2  # Windows within a task differ too.


def test_oscillator_targets_continue_the_same_trajectory():
  # A long context makes the window a fully determined sinusoid: the continuation
  # must satisfy the oscillator's linear recurrence x_{t+1} = 2 e^-g cos(w) x_t - e^-2g x_{t-1}.
  batch = _sample(jax.random.key(4), 'oscillator')
  series = np.concatenate([batch.support_inputs, batch.support_targets], axis=2)[..., 0]
  for task in series.astype(np.float64):
    design = np.stack([task[:, 1:-1].ravel(), task[:, :-2].ravel()], 1)
    coeffs, residual, *_ = np.linalg.lstsq(design, task[:, 2:].ravel(), rcond=None)
    test_utils.assert_close(design @ coeffs, task[:, 2:].ravel(), atol=1e-4)
    assert 0 < -coeffs[1] <= 1  # e^{-2 gamma}: damped or undamped, never growing.


def test_ar_coefficients_are_stable():
  kappa = jax.random.uniform(jax.random.key(5), (200, 4), minval=-0.99, maxval=0.99)
  coefficients = np.asarray(jax.jit(jax.vmap(sequence.ar_coefficients_from_reflection,
                                             in_axes=(0,)))(kappa))
  for a in coefficients:
    roots = np.roots(np.concatenate([[1.0], -a]))
    assert np.abs(roots).max() < 1
  # Order 1: the coefficient is the reflection coefficient itself.
  test_utils.assert_close(sequence.ar_coefficients_from_reflection(jnp.array([0.3])), [0.3])


def test_ar_processes_are_bounded():
  batch = _sample(jax.random.key(6), 'ar', num_tasks=16, ar_order=3,
                  context_length=100, horizon=20)
  series = np.concatenate([batch.support_inputs, batch.support_targets], axis=2)
  # Stationary std is drawn from [0.5, 1.5]: values stay within a few std.
  assert np.abs(series).max() < 8
  assert 0.3 < series.std() < 2.0


@pytest.mark.parametrize('kind', sequence.KINDS)
def test_vmap_equals_loop_over_task_keys(kind):
  key = jax.random.key(7)
  batch = _sample(key, kind)
  one = jax.jit(functools.partial(sequence.sample_sequence_task, kind=kind, **SIZES))
  looped = [one(k) for k in jax.random.split(key, 4)]
  expected = types.TaskBatch(*[jnp.stack(parts) for parts in zip(*looped)])
  test_utils.assert_trees_all_close(batch, expected, rtol=1e-5, atol=1e-6)


def test_usable_inside_jit_and_no_retrace():
  counter = test_utils.CompileCounter()

  @jax.jit
  @counter.wrap
  def mean_target(key):
    return jnp.mean(_sample(key, 'ar').query_targets)

  mean_target(jax.random.key(8))
  mean_target(jax.random.key(9))
  assert counter.count == 1


def test_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match='kind'):
    _sample(jax.random.key(0), 'lorenz')
  with pytest.raises(ValueError, match='horizon'):
    _sample(jax.random.key(0), 'ar', horizon=0)
  with pytest.raises(ValueError, match='num_support'):
    _sample(jax.random.key(0), 'oscillator', num_support=2.5)
