"""Gate sources (dense, shared) and the step pieces that read them: harden_at, freeze, dual_ascent."""

import jax
import jax.numpy as jnp
import pytest

from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import l0_objective
from metaprune_jax.masks import sparsity
from metaprune_jax.meta import gate_source
from metaprune_jax.meta import maml
from metaprune_jax.meta import meta_pruner
from metaprune_jax.meta import step as meta_step
from tests import test_utils
from tests.meta import common


def _meta_params():
  meta_params, _, _ = common.mlp_problem(hidden=(8, 8), init_logit=1.0)
  noise = jax.tree.map(lambda g: 0.5 * jax.random.normal(jax.random.key(3), g.shape), meta_params['gate_logits'])
  return {**meta_params, 'gate_logits': jax.tree.map(jnp.add, meta_params['gate_logits'], noise)}


def test_no_gates_leaves_everything_alone():
  source = gate_source.no_gates()
  _, _, loss_fn = common.mlp_problem()
  learner = maml.maml(loss_fn)
  assert source.groups == () and source.expected_density is None and not source.hardens_per_task
  assert source.bind(learner, False) is learner and source.bind(learner, True) is learner
  meta_params = _meta_params()
  assert source.harden(meta_params) is meta_params


def test_shared_gates_density_is_the_closed_form_one():
  hc = hard_concrete.HardConcrete(beta=0.5)
  source = gate_source.shared_gates(hc)
  meta_params = _meta_params()
  assert source.groups == ('gate_logits',) and not source.hardens_per_task
  test_utils.assert_close(source.expected_density(meta_params, None, False),
                          sparsity.expected_density(meta_params['params'], meta_params['gate_logits'], hc))
  assert source.harden(meta_params) is meta_params  # No target: nothing to harden.


@pytest.mark.parametrize('target', [0.5, 0.75])
def test_shared_gates_harden_to_exactly_the_target(target):
  meta_params = _meta_params()
  hardened = gate_source.shared_gates(target_sparsity=target).harden(meta_params)
  test_utils.assert_trees_all_equal(hardened['params'], meta_params['params'])
  realised = float(sparsity.realised_sparsity(hardened['params'], hardened['gate_logits']))
  gated = sparsity.num_gated_weights(meta_params['params'], meta_params['gate_logits'])
  assert realised == pytest.approx(target, abs=1.0 / gated)
  test_utils.assert_close(gate_source.hardened_density(target), 1.0 - target)


def test_harden_at_applies_only_at_the_harden_step():
  meta_params = _meta_params()
  source = gate_source.shared_gates(target_sparsity=0.75)
  fn = jax.jit(meta_step.harden_at(source, 5))
  for step in (0, 4, 6):
    test_utils.assert_trees_all_equal(fn(meta_params, jnp.int32(step)), meta_params)
  test_utils.assert_trees_all_equal(fn(meta_params, jnp.int32(5)), source.harden(meta_params))
  test_utils.assert_trees_all_equal(meta_step.harden_at(source, None)(meta_params, 5), meta_params)
  per_task = meta_pruner.meta_pruner_gates(meta_pruner.task_features_fn(), target_sparsity=0.75)
  assert per_task.hardens_per_task  # Hardened inside every task instead: harden_at leaves it alone.
  test_utils.assert_trees_all_equal(meta_step.harden_at(per_task, 5)(meta_params, jnp.int32(5)), meta_params)


def test_freeze_zeroes_only_the_named_groups_once_frozen():
  tree = {'params': {'w': jnp.ones(2)}, 'gate_logits': {'w': jnp.ones(2)}, 'meta_pruner': {'a': jnp.ones(3)}}
  groups = ('gate_logits', 'meta_pruner', 'absent')
  frozen = meta_step.freeze(tree, groups, jnp.bool_(True))
  test_utils.assert_trees_all_equal(frozen, {'params': {'w': jnp.ones(2)}, 'gate_logits': {'w': jnp.zeros(2)},
                                             'meta_pruner': {'a': jnp.zeros(3)}})
  test_utils.assert_trees_all_equal(meta_step.freeze(tree, groups, jnp.bool_(False)), tree)
  assert meta_step.freeze(tree, groups, None) is tree


def test_dual_ascent_steps_unless_dense_or_frozen():
  objective = l0_objective.L0Objective(mode='target', target_sparsity=0.9, dual_lr=0.1)
  args = (jnp.float32(0.2), jnp.float32(1.0), jnp.float32(0.5), jnp.int32(3))  # Density 0.5: far too dense.
  stepped = meta_step.dual_ascent(gate_source.shared_gates(), objective)(*args, None)
  expected = l0_objective.update_multiplier(*args[:3], objective, args[3])
  test_utils.assert_close(stepped, expected)
  assert float(stepped) > 0.2
  test_utils.assert_close(meta_step.dual_ascent(gate_source.shared_gates(), objective)(*args, jnp.bool_(True)), 0.2)
  test_utils.assert_close(meta_step.dual_ascent(gate_source.no_gates(), objective)(*args, None), 0.2)
