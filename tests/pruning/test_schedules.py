"""Tests for metaprune_jax.pruning.schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.pruning import schedules
from tests import test_utils


def _assert_monotone(values):
  values = np.asarray(values)
  assert np.all(np.diff(values) >= 0), values


def test_polynomial_hits_target_and_is_monotone():
  schedule = schedules.polynomial_schedule(0.8, begin_step=10, end_step=50)
  values = np.asarray(schedule(jnp.arange(0, 80)))
  _assert_monotone(values)
  assert np.all(values[:10] == 0.0)
  assert np.all(values[50:] == np.float32(0.8))
  assert values[49] < np.float32(0.8)
  # Halfway: s_f * (1 - (1 - 1/2)^3) = 0.8 * 0.875.
  test_utils.assert_close(values[30], 0.7)


def test_polynomial_initial_sparsity_and_update_frequency():
  schedule = schedules.polynomial_schedule(
      0.9, begin_step=0, end_step=10, initial_sparsity=0.5, update_every_steps=4)
  values = np.asarray(schedule(jnp.arange(12)))
  _assert_monotone(values)
  test_utils.assert_close(values[0], 0.5)
  # Constant between updates at steps 0, 4, 8; exact target from end_step on
  # even though 10 is not an update step.
  assert values[0] == values[3] and values[4] == values[7] and values[8] == values[9]
  assert values[3] < values[4] < values[8] < values[10]
  assert values[10] == values[11] == np.float32(0.9)


def test_iterative_geometric_removes_same_fraction_of_remaining_each_cycle():
  schedule = schedules.iterative_schedule(0.9, num_cycles=4, steps_per_cycle=5, begin_step=2)
  values = np.asarray(schedule(jnp.arange(0, 40)))
  _assert_monotone(values)
  assert values[0] == values[1] == 0.0
  cycle_values = values[[2, 7, 12, 17]]  # first step of each cycle
  remaining = 1.0 - np.concatenate([[0.0], cycle_values])
  ratios = remaining[1:] / remaining[:-1]
  test_utils.assert_close(ratios, np.full(4, 0.1 ** 0.25), rtol=1e-5)
  assert values[17] == np.float32(0.9) and np.all(values[17:] == np.float32(0.9))
  assert values[16] < np.float32(0.9)
  # Constant within a cycle.
  assert np.all(values[2:7] == values[2])


def test_iterative_linear_has_equal_increments():
  schedule = schedules.iterative_schedule(0.6, num_cycles=3, steps_per_cycle=2, mode='linear')
  test_utils.assert_close(schedule(jnp.arange(8)), [0.2, 0.2, 0.4, 0.4, 0.6, 0.6, 0.6, 0.6])


def test_schedules_are_jit_friendly():
  for schedule in (schedules.polynomial_schedule(0.5, 2, 9, update_every_steps=2),
                   schedules.iterative_schedule(0.5, 3, 2)):
    jitted = jax.jit(schedule)
    for step in (0, 4, 20):
      test_utils.assert_equal(jitted(jnp.int32(step)), schedule(step))


@pytest.mark.parametrize('factory, kwargs, name', [
    (schedules.polynomial_schedule, {'target_sparsity': 1.0, 'begin_step': 0, 'end_step': 5}, 'target_sparsity'),
    (schedules.polynomial_schedule,
     {'target_sparsity': 0.5, 'begin_step': 5, 'end_step': 5}, 'end_step'),
    (schedules.polynomial_schedule,
     {'target_sparsity': 0.5, 'begin_step': 0, 'end_step': 5, 'update_every_steps': 0},
     'update_every_steps'),
    (schedules.polynomial_schedule,
     {'target_sparsity': 0.5, 'begin_step': 0, 'end_step': 5, 'initial_sparsity': 0.6},
     'initial_sparsity'),
    (schedules.iterative_schedule,
     {'target_sparsity': 0.5, 'num_cycles': 0, 'steps_per_cycle': 1}, 'num_cycles'),
    (schedules.iterative_schedule,
     {'target_sparsity': 0.5, 'num_cycles': 2, 'steps_per_cycle': 1, 'mode': 'cubic'}, 'mode'),
])
def test_invalid_schedule_arguments_raise_naming_them(factory, kwargs, name):
  with pytest.raises(ValueError, match=name):
    factory(**kwargs)


def test_rewind_returns_early_weights_under_current_mask():
  params_now = {'d': {'kernel': jnp.full((2, 2), 5.0), 'bias': jnp.full(2, 5.0)}}
  params_early = {'d': {'kernel': jnp.array([[1.0, 2.0], [3.0, 4.0]]), 'bias': jnp.ones(2)}}
  masks = {'d': {'kernel': jnp.array([[1.0, 0.0], [0.0, 1.0]]), 'bias': None}}
  out = schedules.rewind(params_now, params_early, masks)
  test_utils.assert_equal(out['d']['kernel'], [[1.0, 0.0], [0.0, 4.0]])
  test_utils.assert_equal(out['d']['bias'], [1.0, 1.0])
  kept = schedules.rewind(params_now, params_early, masks, rewind_dense=False)
  test_utils.assert_equal(kept['d']['bias'], [5.0, 5.0])
  with pytest.raises(ValueError, match='params_early'):
    schedules.rewind(params_now, {'d': {'kernel': jnp.ones((2, 2))}}, masks)
