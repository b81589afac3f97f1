"""The meta-pruner: task embedding, task logits, mask distances, and its gate source in the meta-step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax import losses
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import harden
from metaprune_jax.masks import l0_objective
from metaprune_jax.masks import sparsity
from metaprune_jax.meta import gate_source
from metaprune_jax.meta import maml
from metaprune_jax.meta import meta_pruner
from metaprune_jax.meta import optimizer as outer_optimizer
from metaprune_jax.meta import step as meta_step
from metaprune_jax.meta.settings import InnerSettings
from metaprune_jax.nets import mlp
from metaprune_jax.tasks import sinusoid
from tests import test_utils
from tests.meta import common


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


def _conv_scale_features(key, n=6, dim=2):
  """``[n, dim]`` features of the scale Conv-4 embeddings reach in training: about 50 +- 5."""
  return 50.0 + 5.0 * jax.random.normal(key, (n, dim))


@pytest.mark.parametrize('embedding', meta_pruner.EMBEDDINGS)
@pytest.mark.parametrize('scale', [1.0, 50.0])
def test_task_embedding_is_permutation_invariant(embedding, scale):
  _, _, pruner = _setup()
  features = scale * jax.random.normal(jax.random.key(2), (7, 2))
  permuted = features[jax.random.permutation(jax.random.key(3), 7)]
  test_utils.assert_close(meta_pruner.task_embedding(pruner, permuted, embedding=embedding),
                          meta_pruner.task_embedding(pruner, features, embedding=embedding), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('embedding, bound', [('tanh', 1.0), ('normalized', np.sqrt(4 - 1))])
def test_task_embedding_is_bounded_at_every_feature_scale(embedding, bound):
  _, _, pruner = _setup()  # embed_dim 4.
  for i, scale in enumerate((1e-3, 1.0, 1e3)):
    e = meta_pruner.task_embedding(pruner, scale * jax.random.normal(jax.random.key(i), (5, 2)), embedding=embedding)
    assert e.shape == (4,) and float(jnp.max(jnp.abs(e))) <= bound + 1e-4


def test_only_the_normalized_embedding_responds_to_conv_scale_features():
  _, _, pruner = _setup()
  features = _conv_scale_features(jax.random.key(2))
  other_task = _conv_scale_features(jax.random.key(3))
  responses = {}
  for embedding in meta_pruner.EMBEDDINGS:
    embed = functools.partial(meta_pruner.task_embedding, pruner, embedding=embedding)
    responses[embedding] = float(jnp.max(jnp.abs(jax.jacobian(embed)(features))))
    responses[embedding + ' between tasks'] = float(jnp.max(jnp.abs(embed(features) - embed(other_task))))
  assert responses['tanh'] < 1e-8 and responses['tanh between tasks'] < 1e-6, responses  # Saturated: frozen and blind.
  assert responses['normalized'] > 1e-4 and responses['normalized between tasks'] > 1e-2, responses


def test_normalized_backbone_features_are_standardised_per_example_and_pairs_are_not():
  task = common.task(common.sampler(jax.random.key(2), 1), 0)
  params = {'w': 50.0 * jnp.ones((1, 8))}
  embed_fn = lambda params, inputs: inputs @ params['w'] + jnp.arange(8.0)  # [n, 8], about 50 per unit of x.
  raw = meta_pruner.task_features_fn(embed_fn, embedding='tanh')(params, task)
  normalized = meta_pruner.task_features_fn(embed_fn, embedding='normalized')(params, task)
  test_utils.assert_close(raw, embed_fn(params, task.support_inputs))
  test_utils.assert_close(jnp.mean(normalized, axis=-1), jnp.zeros((5,)), atol=1e-4)
  test_utils.assert_close(jnp.std(normalized, axis=-1), jnp.ones((5,)), rtol=1e-3)
  pairs = meta_pruner.task_features_fn(embedding='normalized')(params, task)
  test_utils.assert_close(pairs, meta_pruner.regression_features(task.support_inputs, task.support_targets))
  with pytest.raises(ValueError, match="unknown meta-pruner embedding 'sigmoid'; use one of"):
    meta_pruner.task_features_fn(embed_fn, embedding='sigmoid')


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
    return sparsity.expected_density(params, logits) + sum(
        jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(logits))
  grads = jax.jit(jax.grad(loss))(pruner)
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


def _sinusoid_state(harden_step=None, target=0.75, features_fn=None, feature_dim=2, embedding='normalized',
                    modulation_gain=1.0):
  model = mlp.make_mlp((8, 8), 1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']
  base = hard_concrete.init_gate_logits(params, 'weight', init_logit=1.0)
  features_fn = features_fn or meta_pruner.task_features_fn()
  pruner = meta_pruner.init_meta_pruner(jax.random.key(1), params, base, feature_dim=feature_dim, hidden_sizes=(8,),
                                        embed_dim=4)
  learner = maml.maml(losses.mse_loss(model.apply))
  source = meta_pruner.meta_pruner_gates(features_fn, target_sparsity=target, embedding=embedding,
                                         modulation_gain=modulation_gain)
  optimizer = outer_optimizer.outer_optimizer({'params': 1e-2, 'gate_logits': 1e-1, 'meta_pruner': 1e-2})
  state = meta_step.init_meta_state(jax.random.key(2), params, base, optimizer, extra={'meta_pruner': pruner})
  counter = test_utils.CompileCounter()
  step = meta_step.make_meta_step(counter.wrap(common.sampler), learner, optimizer, meta_batch_size=4,
                                  settings=InnerSettings(inner_lr=0.01), gates=source,
                                  objective=l0_objective.L0Objective(target_sparsity=target, dual_lr=0.1),
                                  harden_step=harden_step)
  return state, meta_step.compile_step(step), counter, learner, source, features_fn


def test_meta_step_trains_the_pruner_without_recompiling():
  state, step, counter, _, _, _ = _sinusoid_state()
  before = common.copy(state.meta_params['meta_pruner'])
  for _ in range(3):
    state, metrics = step(state)
  test_utils.assert_all_finite(metrics)
  assert counter.count == 1
  moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(state.meta_params['meta_pruner']),
                                                         jax.tree.leaves(before))]
  assert min(moved) > 0, 'every meta-pruner parameter group must receive updates'


def test_an_untrained_pruner_runs_the_shared_gate_learner_exactly():
  state, _, _, learner, source, _ = _sinusoid_state()
  meta_params, settings = state.meta_params, InnerSettings(inner_lr=0.01)
  tasks, key = common.sampler(jax.random.key(4), 3), jax.random.key(5)
  bound = source.bind(learner, False)
  assert bound.name == 'maml+meta_pruner' and source.groups == ('gate_logits', 'meta_pruner')
  shared = {'params': meta_params['params'], 'gate_logits': meta_params['gate_logits']}
  for mode in ('sample', 'off'):
    test_utils.assert_close(bound.batch_loss(meta_params, tasks, key, settings=settings, gate_mode=mode),
                            learner.batch_loss(shared, tasks, key, settings=settings, gate_mode=mode), rtol=1e-6)
  test_utils.assert_close(source.expected_density(meta_params, tasks, False),
                          gate_source.shared_gates().expected_density(shared, tasks, False), rtol=1e-6)
  test_utils.assert_close(source.expected_density(meta_params, tasks, True), 0.25)  # Hardened: the target.


def test_the_hardened_learner_runs_each_task_on_its_own_hardened_mask():
  state, _, _, learner, source, features_fn = _sinusoid_state()
  meta_params = {**state.meta_params, 'meta_pruner': _perturbed(state.meta_params['meta_pruner'],
                                                                jax.random.key(6))}
  settings, tasks = InnerSettings(inner_lr=0.01), common.sampler(jax.random.key(7), 3)
  hardened = source.bind(learner, True)
  masks = meta_pruner.task_masks(meta_params, tasks, features_fn, target_sparsity=0.75)
  for i in range(3):
    task = common.task(tasks, i)
    logits = meta_pruner.task_gate_logits(meta_params['meta_pruner'], meta_params['gate_logits'],
                                          meta_params['params'], features_fn(meta_params['params'], task))
    own = {'params': meta_params['params'], 'gate_logits': harden.harden(meta_params['params'], logits, 0.75)}
    test_utils.assert_close(hardened.task_traces(meta_params, task, settings=settings)['loss'],
                            learner.task_traces(own, task, settings=settings)['loss'], rtol=1e-6)
    test_utils.assert_trees_all_equal(jax.tree.map(lambda m, i=i: m[i], masks),
                                      hard_concrete.deterministic_gates(own['gate_logits']))
  soft, noise_key = source.bind(learner, False), jax.random.key(8)
  assert float(hardened.batch_loss(meta_params, tasks, noise_key, settings=settings)) != float(
      soft.batch_loss(meta_params, tasks, noise_key, settings=settings))


def test_hardened_task_masks_meet_the_target_on_held_out_tasks():
  state, step, counter, _, _, features_fn = _sinusoid_state(harden_step=2)
  for _ in range(2):
    state, _ = step(state)
  state, metrics = step(state)  # Step index 2: every task hardens its own mask; the pruner freezes.
  test_utils.assert_close(metrics['mask/expected_sparsity'], 0.75, rtol=1e-6)  # The hardened density: exact.
  frozen = common.copy((state.meta_params['meta_pruner'], state.meta_params['gate_logits'], state.multiplier))
  params_before = common.copy(state.meta_params['params'])
  state, _ = step(state)
  test_utils.assert_trees_all_equal((state.meta_params['meta_pruner'], state.meta_params['gate_logits'],
                                     state.multiplier), frozen)
  assert float(jnp.max(jnp.abs(state.meta_params['params']['Dense_1']['kernel']
                               - params_before['Dense_1']['kernel']))) > 0  # The weights fine-tune.
  assert counter.count == 1  # The switch to the hardened learner is a lax.cond, not a retrace.
  tasks = sinusoid.sample_sinusoid_tasks(jax.random.key(9), num_tasks=6, num_support=5, num_query=5)
  masks = jax.jit(lambda mp, t: meta_pruner.task_masks(mp, t, features_fn, target_sparsity=0.75))(
      state.meta_params, tasks)
  params = state.meta_params['params']
  gated = sparsity.num_gated_weights(params, state.meta_params['gate_logits'])
  zeros = sum(jnp.sum(m == 0, axis=tuple(range(1, m.ndim))) for m in jax.tree.leaves(masks))
  test_utils.assert_equal(zeros, jnp.full((6,), int(np.ceil(0.75 * gated))))


def _conv_scale_features_fn(embedding):
  """A stand-in backbone: each support pair mapped to 8 features of about 50 +- 5 (normalised as ``embedding``
  normalises backbone features)."""
  projection = jax.random.normal(jax.random.key(10), (2, 8))

  def features_fn(params, task):
    del params
    pairs = meta_pruner.regression_features(task.support_inputs, task.support_targets)
    features = 50.0 + 5.0 * jnp.tanh(pairs @ projection)  # [n, 8]
    return meta_pruner.layer_norm(features) if embedding == 'normalized' else features
  return features_fn


@pytest.mark.parametrize('embedding', meta_pruner.EMBEDDINGS)
def test_trained_masks_differ_across_tasks_only_with_the_normalized_embedding(embedding):
  features_fn = _conv_scale_features_fn(embedding)
  state, step, _, _, _, _ = _sinusoid_state(features_fn=features_fn, feature_dim=8, embedding=embedding)
  for _ in range(5):
    state, metrics = step(state)
  test_utils.assert_all_finite(metrics)
  tasks = sinusoid.sample_sinusoid_tasks(jax.random.key(9), num_tasks=6, num_support=5, num_query=5)
  masks = meta_pruner.task_masks(state.meta_params, tasks, features_fn, target_sparsity=0.75, embedding=embedding)
  jaccard = float(meta_pruner.mask_distances([jax.tree.map(lambda m, i=i: m[i], masks) for i in range(6)])['jaccard'])
  if embedding == 'tanh':
    assert jaccard == 0.0  # Saturated: every task gets the same mask.
  else:
    assert jaccard > 0.0


def test_the_modulation_gain_multiplies_the_task_offsets_only():
  params, base, pruner = _setup()
  pruner = _perturbed(pruner, jax.random.key(3))
  pruner = {**pruner, 'layers': jax.tree.map(lambda d: {**d, 'scale': jnp.zeros(())}, pruner['layers'],
                                             is_leaf=lambda d: isinstance(d, dict) and 'scale' in d)}
  features = jax.random.normal(jax.random.key(4), (5, 2))
  plain = meta_pruner.task_gate_logits(pruner, base, params, features)
  gained = meta_pruner.task_gate_logits(pruner, base, params, features, modulation_gain=7.0)
  jax.tree.map(lambda b, p, g: test_utils.assert_close(g - b, 7.0 * (p - b), rtol=1e-5, atol=1e-5), base, plain,
               gained)
  untrained = meta_pruner.init_meta_pruner(jax.random.key(1), params, base, feature_dim=2, hidden_sizes=(8,),
                                           embed_dim=4)
  test_utils.assert_trees_all_equal(  # Zero modulation weights: still exactly the shared logits at any gain.
      meta_pruner.task_gate_logits(untrained, base, params, features, modulation_gain=7.0), base)


def _trained_mask_jaccard(modulation_gain, num_steps=5):
  """Mean pairwise Jaccard of 6 held-out tasks' masks (75% sparse) after ``num_steps`` meta-steps, on tasks seen
  through the stand-in backbone (normalized embedding)."""
  features_fn = _conv_scale_features_fn('normalized')
  state, step, _, _, _, _ = _sinusoid_state(features_fn=features_fn, feature_dim=8, modulation_gain=modulation_gain)
  for _ in range(num_steps):
    state, metrics = step(state)
  test_utils.assert_all_finite(metrics)
  tasks = sinusoid.sample_sinusoid_tasks(jax.random.key(9), num_tasks=6, num_support=5, num_query=5)
  masks = meta_pruner.task_masks(state.meta_params, tasks, features_fn, target_sparsity=0.75,
                                 modulation_gain=modulation_gain)
  return float(meta_pruner.mask_distances([jax.tree.map(lambda m, i=i: m[i], masks) for i in range(6)])['jaccard'])


def test_a_modulation_gain_makes_trained_task_masks_differ_more():
  # Here the meta-pruner's learning rate is a tenth of the gate logits' (Omniglot: a fiftieth): with gain 1 its
  # per-task offsets stay small next to the base logits' spread and the tasks' masks nearly coincide.
  without, with_gain = _trained_mask_jaccard(1.0), _trained_mask_jaccard(10.0)
  assert with_gain > 2.0 * without, (without, with_gain)  # Measured: 0.30 against 0.13.
