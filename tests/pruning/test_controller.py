"""The policy-gradient sparsity controller: exact budget projection, REINFORCE on a toy reward, vmap = loop."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metaprune_jax.pruning import controller
from metaprune_jax.pruning import select
from tests import test_utils

_MLP_SIZES = (40, 1600, 40)  # The sinusoid MLP's kernels.


def _random_budgets(rng, num, *, unit_costs):
  """``num`` random feasible budgets: 1-5 layers of 1-300 weights, lower bounds 0-2."""
  budgets = []
  while len(budgets) < num:
    layers = int(rng.integers(1, 6))
    sizes = rng.integers(1, 301, size=layers)
    costs = np.ones(layers, int) if unit_costs else rng.integers(1, 9, size=layers)
    lower = np.minimum(rng.integers(0, 3, size=layers), sizes)
    low, high = int(costs @ lower), int(costs @ sizes)
    budgets.append(controller.layer_budget(sizes, costs, int(rng.integers(low, high + 1)), min_kept=lower))
  return budgets


@pytest.mark.parametrize('unit_costs', [True, False], ids=['params', 'flops'])
def test_projection_meets_the_budget_within_the_bounds_for_random_proposals(unit_costs):
  rng = np.random.default_rng(0 if unit_costs else 1)
  for budget in _random_budgets(rng, 6, unit_costs=unit_costs):
    logits = rng.normal(size=(64, len(budget.sizes))) * rng.choice([0.1, 3.0, 12.0])
    counts = np.asarray(jax.jit(jax.vmap(lambda z, b=budget: controller.project(z, b)))(logits))
    sizes, lower, costs = (np.asarray(x) for x in (budget.sizes, budget.min_kept, budget.costs))
    assert counts.dtype == np.int32
    assert np.all(counts >= lower) and np.all(counts <= sizes), budget
    spent = counts @ costs
    assert np.all(spent <= budget.total), budget
    # Nothing left that one more weight of a non-full layer would fit in.
    for c, left in zip(counts, budget.total - spent):
      assert not np.any((c < sizes) & (costs <= left)), (budget, c, left)
    if unit_costs:
      test_utils.assert_equal(spent, np.full(len(spent), budget.total))


def test_params_and_flops_budgets_of_the_sinusoid_mlp():
  params = controller.params_budget(_MLP_SIZES, 0.95)
  assert params.total == 1680 - math.floor(0.95 * 1680 + 0.5) == 84  # select.topk_masks' count.
  test_utils.assert_equal(controller.project(jnp.zeros(3), params), [2, 80, 2])  # Equal logits: uniform.
  dense_flops, bias_flops = 2 * 1680 + 81, 81
  flops = controller.flops_budget(_MLP_SIZES, (2, 2, 2), 0.95, fixed_flops=bias_flops)
  counts = np.asarray(controller.project(jnp.array([2.0, -3.0, 2.0]), flops))
  effective = 2 * counts.sum() + bias_flops
  assert effective <= 0.05 * dense_flops < effective + 2  # Exact up to one multiply-add.
  assert counts[0] > 2 and counts[2] > 2  # Larger logits keep a larger share.


def test_budget_errors_name_the_problem():
  with pytest.raises(ValueError, match='outside'):
    controller.layer_budget((4, 4), (1, 1), 1, min_kept=1)  # Two layers keep at least one each.
  with pytest.raises(ValueError, match='min_kept'):
    controller.layer_budget((4, 4), (1, 1), 4, min_kept=5)
  with pytest.raises(ValueError, match='sparsity'):
    controller.params_budget((4, 4), 1.0)
  with pytest.raises(ValueError, match='num_candidates'):
    controller.reinforce(controller.params_budget((4, 4), 0.5), optax.sgd(0.1), num_candidates=1)


def test_count_masks_vmapped_over_candidates_equal_a_python_loop():
  scores = {'a': {'kernel': jax.random.normal(jax.random.key(0), (5, 6)), 'bias': None},
            'b': {'kernel': jax.random.normal(jax.random.key(1), (6, 2))}}
  budget = controller.params_budget((30, 12), 0.7)
  logits = jax.random.normal(jax.random.key(2), (5, 2)) * 2.0
  counts = jax.vmap(lambda z: controller.project(z, budget))(logits)
  batched = jax.vmap(lambda k: select.count_masks(scores, k))(counts)
  for i in range(5):
    test_utils.assert_equal(counts[i], controller.project(logits[i], budget))
    single = select.count_masks(scores, counts[i])
    test_utils.assert_trees_all_equal(jax.tree.map(lambda x, i=i: x[i], batched), single)
    assert [int(np.sum(single[k]['kernel'])) for k in ('a', 'b')] == [int(c) for c in counts[i]]
  assert batched['a']['bias'] is None


def _toy_reward(target):
  """Minus the L1 distance of an allocation to ``target``, as a share of the budget."""
  target = jnp.asarray(target, jnp.float32)
  return lambda counts: -jnp.sum(jnp.abs(counts - target), axis=-1) / jnp.sum(target)


def test_reinforce_step_moves_the_policy_mean_toward_the_best_allocation():
  budget = controller.params_budget(_MLP_SIZES, 0.95)
  ctrl = controller.reinforce(budget, optax.sgd(0.1), num_candidates=256)
  state = ctrl.init(jax.random.key(0), jnp.zeros(3))
  state, metrics = jax.jit(controller.episode(ctrl, _toy_reward([40, 4, 40])))(state)
  mean = state.policy['mean']
  assert float(mean[0] - mean[1]) > 0.1 and float(mean[2] - mean[1]) > 0.1  # Outer layers gain share.
  assert int(state.episode) == 1 and metrics['controller/counts'].shape == (256, 3)


def test_reinforce_converges_to_a_known_best_allocation():
  budget = controller.params_budget(_MLP_SIZES, 0.95)
  target = [40, 4, 40]
  ctrl = controller.reinforce(budget, optax.adam(0.1), num_candidates=16)
  run = controller.episode(ctrl, _toy_reward(target))
  state = ctrl.init(jax.random.key(3), jnp.zeros(3))
  start = float(_toy_reward(target)(ctrl.allocation(state)))

  @jax.jit
  def episodes(state):
    return jax.lax.scan(lambda s, _: run(s), state, None, length=150)

  state, metrics = episodes(state)
  final = np.asarray(ctrl.allocation(state))
  assert start < -0.9 and float(_toy_reward(target)(final)) > -0.1, final  # Within 10% of the budget.
  rewards = np.asarray(metrics['controller/reward_mean'])
  assert rewards[-20:].mean() > rewards[:20].mean() + 0.5
  assert int(np.sum(final)) == budget.total


def test_update_sets_the_baseline_from_the_first_episode_then_averages():
  budget = controller.params_budget((10, 10), 0.5)
  ctrl = controller.reinforce(budget, optax.sgd(0.0), num_candidates=2, baseline_decay=0.5)
  state = ctrl.init(jax.random.key(0), jnp.zeros(2))
  logits = jnp.zeros((2, 2))
  state, metrics = ctrl.update(state, logits, jnp.array([1.0, 3.0]))
  test_utils.assert_close(metrics['controller/baseline'], 2.0)
  test_utils.assert_close(state.baseline, 2.0)
  state, metrics = ctrl.update(state, logits, jnp.array([5.0, 7.0]))
  test_utils.assert_close(metrics['controller/baseline'], 2.0)  # The advantage used the old baseline.
  test_utils.assert_close(state.baseline, 0.5 * 2.0 + 0.5 * 6.0)
