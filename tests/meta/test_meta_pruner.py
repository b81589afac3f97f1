"""Tests for the meta-pruner's task embedding, task logits and mask distances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.masks import hard_concrete
from metaprune_jax.meta import meta_pruner
from metaprune_jax.nets import mlp
from tests import test_utils


def _setup(granularity='weight'):
  model = mlp.make_mlp((6, 5), 1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']
  base = hard_concrete.init_gate_logits(params, granularity, init_logit=1.0)
  pruner = meta_pruner.init_meta_pruner(jax.random.key(1), params, base, feature_dim=2, hidden_sizes=(8,),
                                        embed_dim=4)
  return params, base, pruner


def _perturbed(pruner, key):
  """Random nonzero modulation weights (an initial pruner has them at zero)."""
  leaves, treedef = jax.tree.flatten(pruner['layers'])
  keys = jax.random.split(key, len(leaves))
  leaves = [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
  return {**pruner, 'layers': jax.tree.unflatten(treedef, leaves)}


def test_task_embedding_is_permutation_invariant():
  _, _, pruner = _setup()
  features = jax.random.normal(jax.random.key(2), (7, 2))
  permuted = features[jax.random.permutation(jax.random.key(3), 7)]
  test_utils.assert_close(meta_pruner.task_embedding(pruner, permuted),
                          meta_pruner.task_embedding(pruner, features), rtol=1e-5, atol=1e-6)


def test_initial_pruner_gives_the_shared_logits_exactly():
  params, base, pruner = _setup()
  features = jax.random.normal(jax.random.key(2), (5, 2))
  test_utils.assert_trees_all_equal(meta_pruner.task_gate_logits(pruner, base, params, features), base)


@pytest.mark.parametrize('granularity', ['weight', 'out_unit', 'in_unit'])
def test_task_logits_mirror_the_gate_tree_and_depend_on_the_task(granularity):
  params, base, pruner = _setup(granularity)
  pruner = _perturbed(pruner, jax.random.key(4))
  a = meta_pruner.task_gate_logits(pruner, base, params, jax.random.normal(jax.random.key(5), (5, 2)))
  b = meta_pruner.task_gate_logits(pruner, base, params, jax.random.normal(jax.random.key(6), (5, 2)))
  assert jax.tree.structure(a, is_leaf=lambda x: x is None) == jax.tree.structure(base, is_leaf=lambda x: x is None)
  for la, lb, l0 in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(base)):
    assert la.shape == l0.shape
  assert max(float(jnp.max(jnp.abs(la - lb))) for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b))) > 1e-3


def test_gradients_reach_every_pruner_parameter():
  params, base, pruner = _setup()
  pruner = _perturbed(pruner, jax.random.key(4))
  features = jax.random.normal(jax.random.key(2), (5, 2))

  def loss(pruner):
    logits = meta_pruner.task_gate_logits(pruner, base, params, features)
    return hard_concrete.expected_density(params, logits) + sum(
        jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(logits))
  grads = jax.grad(loss)(pruner)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert float(jnp.max(jnp.abs(g))) > 0, f'no gradient at {jax.tree_util.keystr(path)}'


def test_unit_statistic_uses_the_norm_of_the_switched_weights():
  param = jnp.array([[3.0, 0.0], [4.0, 1.0]])  # Columns have norms 5 and 1.
  z = meta_pruner._standardised_log_magnitude(param, jnp.zeros((2,)))
  test_utils.assert_close(z, jnp.array([1.0, -1.0]), atol=1e-4)
  rows = meta_pruner._standardised_log_magnitude(param, jnp.zeros((2, 1)))  # Row norms 3 and sqrt(17).
  assert rows.shape == (2, 1) and float(rows[0, 0]) < float(rows[1, 0])


def test_mask_distances_match_hand_counts():
  a = {'k': jnp.array([1.0, 1.0, 0.0, 0.0])}
  b = {'k': jnp.array([1.0, 0.0, 1.0, 0.0])}
  same = meta_pruner.mask_distances([a, a])
  test_utils.assert_close(same['jaccard'], 0.0)
  test_utils.assert_close(same['hamming'], 0.0)
  d = meta_pruner.mask_distances([a, b])  # Kept {0,1} vs {0,2}: 1 shared of 3; 2 of 4 gates differ.
  test_utils.assert_close(d['jaccard'], 2.0 / 3.0, rtol=1e-6)
  test_utils.assert_close(d['hamming'], 0.5)
  three = meta_pruner.mask_distances([a, b, {'k': jnp.array([0.0, 0.0, 1.0, 1.0])}])
  expected_jaccard = np.mean([2 / 3, 1.0, 2 / 3])
  test_utils.assert_close(three['jaccard'], expected_jaccard, rtol=1e-6)


def _sinusoid_state(harden_step=None, target=0.75):
  from metaprune_jax import losses
  from metaprune_jax.masks import l0_objective
  from metaprune_jax.meta import learners
  from metaprune_jax.meta import maml
  from metaprune_jax.meta import step as meta_step
  from metaprune_jax.tasks import sinusoid
  model = mlp.make_mlp((8, 8), 1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']
  base = hard_concrete.init_gate_logits(params, 'weight', init_logit=1.0)
  features_fn = meta_pruner.task_features_fn()
  pruner = meta_pruner.init_meta_pruner(jax.random.key(1), params, base, feature_dim=2, hidden_sizes=(8,),
                                        embed_dim=4)
  loss_fn = losses.mse_loss(model.apply)
  learner, density = meta_pruner.conditioned_learner(learners.get_learner('maml', loss_fn=loss_fn), features_fn,
                                                     target_sparsity=target)
  optimizer = meta_step.make_outer_optimizer(1e-2, 1e-1)
  state = meta_step.init_meta_state(jax.random.key(2), params, base, optimizer, extra={'meta_pruner': pruner})
  sampler = lambda key, n: sinusoid.sample_sinusoid_tasks(key, num_tasks=n, num_support=5, num_query=5)
  counter = test_utils.CompileCounter()
  step = meta_step.make_meta_step(counter.wrap(sampler), loss_fn, optimizer, meta_batch_size=4,
                                  settings=maml.InnerSettings(inner_lr=0.01),
                                  objective=l0_objective.L0Objective(target_sparsity=target, dual_lr=0.1),
                                  harden_step=harden_step, learner=learner, gate_density=density)
  return state, step, counter, learner, features_fn, sampler


def test_meta_step_trains_the_pruner_without_recompiling():
  state, step, counter, _, _, _ = _sinusoid_state()
  before = state.meta_params['meta_pruner']
  before = jax.tree.map(jnp.copy, before)
  for _ in range(3):
    state, metrics = step(state)
  test_utils.assert_all_finite(metrics)
  assert counter.count == 1
  moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(state.meta_params['meta_pruner']),
                                                         jax.tree.leaves(before))]
  assert min(moved) > 0, 'every meta-pruner parameter group must receive updates'


def test_hardened_task_masks_meet_the_target_on_held_out_tasks():
  from metaprune_jax.tasks import sinusoid
  state, step, _, _, features_fn, _ = _sinusoid_state(harden_step=2)
  for _ in range(4):
    state, _ = step(state)
  frozen = jax.tree.map(jnp.copy, state.meta_params['meta_pruner'])
  state, _ = step(state)
  test_utils.assert_trees_all_equal(state.meta_params['meta_pruner'], frozen)  # Frozen after hardening.
  tasks = sinusoid.sample_sinusoid_tasks(jax.random.key(9), num_tasks=6, num_support=5, num_query=5)
  masks = meta_pruner.task_masks(state.meta_params, tasks, features_fn, target_sparsity=0.75)
  params = state.meta_params['params']
  gated = hard_concrete.num_gated_weights(params, state.meta_params['gate_logits'])
  zeros = sum(jnp.sum(m == 0, axis=tuple(range(1, m.ndim))) for m in jax.tree.leaves(masks))
  test_utils.assert_equal(zeros, jnp.full((6,), int(np.ceil(0.75 * gated))))
