"""The three sparsity-objective forms and their dual updates."""

import jax
import jax.numpy as jnp
import pytest

from metaprune_jax.masks import l0_objective
from tests import test_utils


def test_penalty_mode_adds_lambda_times_density():
  obj = l0_objective.L0Objective(mode='penalty', penalty=0.5)
  test_utils.assert_close(l0_objective.outer_objective(jnp.float32(1.0), jnp.float32(0.4), jnp.float32(9.0), obj), 1.2)
  assert float(l0_objective.update_multiplier(jnp.float32(9.0), 1.0, 0.4, obj)) == 9.0


def test_target_mode_dual_ascent_moves_toward_the_target():
  obj = l0_objective.L0Objective(mode='target', target_sparsity=0.9, dual_lr=0.1)
  too_dense = l0_objective.update_multiplier(jnp.float32(1.0), 0.0, jnp.float32(0.5), obj)
  test_utils.assert_close(too_dense, 1.0 + 0.1 * 0.4)
  too_sparse = l0_objective.update_multiplier(jnp.float32(0.01), 0.0, jnp.float32(0.0), obj)
  test_utils.assert_close(too_sparse, 0.01 - 0.1 * 0.1)  # Equality constraint: mu may go negative.
  test_utils.assert_close(l0_objective.update_multiplier(too_sparse, 0.0, jnp.float32(0.0), obj), -0.01)
  grad = jax.grad(lambda d: l0_objective.outer_objective(jnp.float32(1.0), d, jnp.float32(2.0), obj))(0.5)
  test_utils.assert_close(grad, 2.0)


def test_budget_mode_weights_the_loss_violation():
  obj = l0_objective.L0Objective(mode='budget', loss_budget=0.3, dual_lr=0.5)
  value = l0_objective.outer_objective(jnp.float32(0.5), jnp.float32(0.2), jnp.float32(2.0), obj)
  test_utils.assert_close(value, 0.2 + 2.0 * (0.5 - 0.3))
  test_utils.assert_close(l0_objective.update_multiplier(jnp.float32(2.0), jnp.float32(0.5), 0.2, obj), 2.1)
  within_budget = l0_objective.update_multiplier(jnp.float32(0.01), jnp.float32(0.1), 0.2, obj)
  assert float(within_budget) == 0.0  # Inequality constraint: projected onto mu >= 0.


def test_multiplier_receives_no_gradient():
  obj = l0_objective.L0Objective(mode='target')
  grad = jax.grad(lambda mu: l0_objective.outer_objective(jnp.float32(1.0), jnp.float32(0.5), mu, obj))(1.0)
  assert float(grad) == 0.0


@pytest.mark.parametrize('sparsity', [-0.1, 1.0, 1.5])
def test_sparsity_outside_unit_interval_names_the_flag(sparsity):
  with pytest.raises(ValueError, match='--config.target_sparsity'):
    l0_objective.validate(l0_objective.L0Objective(target_sparsity=sparsity))


def test_unknown_mode_names_the_flag():
  with pytest.raises(ValueError, match='--config.sparsity_mode'):
    l0_objective.validate(l0_objective.L0Objective(mode='magic'))


def test_target_ramps_over_warmup_steps():
  obj = l0_objective.L0Objective(mode='target', target_sparsity=0.8, warmup_steps=100)
  test_utils.assert_close(l0_objective.target_sparsity_at(obj, 0), 0.0)
  test_utils.assert_close(l0_objective.target_sparsity_at(obj, 50), 0.4)
  test_utils.assert_close(l0_objective.target_sparsity_at(obj, 500), 0.8)
  # At step 50 a density of 0.6 meets the ramped target exactly: the multiplier stays put.
  test_utils.assert_close(l0_objective.update_multiplier(jnp.float32(1.0), 0.0, jnp.float32(0.6), obj, 50), 1.0)


def test_quadratic_term_pulls_toward_the_target_from_both_sides():
  obj = l0_objective.L0Objective(mode='target', target_sparsity=0.9, quadratic=10.0)
  grad = lambda d: float(jax.grad(lambda x: l0_objective.outer_objective(
      jnp.float32(0.0), x, jnp.float32(0.0), obj))(jnp.float32(d)))
  test_utils.assert_close(grad(0.2), 2 * 10.0 * 0.1, rtol=1e-5)   # Too dense: push density down.
  test_utils.assert_close(grad(0.05), -2 * 10.0 * 0.05, rtol=1e-5)  # Too sparse: push it up.
