"""Classic pruning inside MAML: fixed masks hold, SNIP scores the meta-loss, gradual pruning never retraces."""

import os
import types as pytypes

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import baselines
from experiments import build
from experiments import evaluation
from experiments import problems
from experiments.configs import omniglot_tiny
from experiments.configs import smoke
from metaprune_jax import types
from metaprune_jax.masks import sparsity
from metaprune_jax.meta import learners
from metaprune_jax.meta.settings import InnerSettings
from tests import shared_data
from tests import test_utils


def _config(**overrides):
  config = smoke.get_config()
  config.gates.mask = 'none'
  config.outer.num_outer_steps = 12
  config.eval.num_tasks = 10
  config.sparsity.target_sparsity = 0.7
  config.pruning.snip_num_tasks = 4
  config.pruning.gradual_begin_fraction = 0.25  # Step 3 ...
  config.pruning.gradual_end_fraction = 0.75    # ... to step 9, masks every 2 steps.
  config.pruning.gradual_update_every_steps = 2
  config.pruning.rl_episodes = 2      # rl: a two-episode controller of tiny candidates.
  config.pruning.rl_candidates = 2
  config.pruning.rl_finetune_steps = 2
  config.pruning.rl_validation_tasks = 4
  for name, value in overrides.items():  # Fields of the pruning section.
    config.pruning[name] = value
  return config


def _kernels(tree):
  return {name: layer['kernel'] for name, layer in tree.items()}


@pytest.mark.parametrize('method', list(baselines.BASELINES))
def test_pruned_weights_stay_exactly_zero_and_the_rest_trains(method):
  config = _config()
  updates = []
  exp = baselines.dense_experiment(config)
  state = baselines.run_baseline(method, exp, on_mask_update=lambda step, masks: updates.append(step))
  assert int(state.step) == config.outer.num_outer_steps  # Equal budget.
  expected_updates = {'magnitude_finetune': [6], 'filter_finetune': [6], 'iterative_magnitude': [6, 8, 10],
                      'snip': [0], 'random': [0], 'gradual_magnitude': [3, 5, 7, 9], 'rl': [6], 'l0': [6],
                      'rl_l0_fill': [6], 'erk_l0_fill': [6], 'l0_l0_fill': [6],
                      'uniform_budget': [6], 'erk_budget': [6]}
  assert updates == expected_updates[method]  # *_finetune: after half the budget (dense phase).
  if method not in ('filter_finetune', 'erk_l0_fill', 'erk_budget'):  # Unstructured: exactly the target (ERK: up to rounding).
    num_kernel = 8 + 64 + 8
    test_utils.assert_equal(float(sparsity.mask_sparsity(state.masks)),
                            np.float32(np.floor(0.7 * num_kernel + 0.5) / num_kernel))
  init_state = exp.init_state()
  for name, kernel in _kernels(state.meta_params['params']).items():
    mask = np.asarray(state.masks[name]['kernel'])
    kernel = np.asarray(kernel)
    assert np.all(kernel[mask == 0] == 0.0), name
    assert np.all(kernel[mask == 1] != 0.0), name
  before = init_state.meta_params['params']['Dense_1']['kernel']
  moved = np.asarray(state.meta_params['params']['Dense_1']['kernel'] - before)
  assert np.abs(moved[np.asarray(state.masks['Dense_1']['kernel']) == 1]).max() > 0.0  # Kept weights train.
  test_utils.assert_all_finite(state.meta_params['params'])


def test_snip_masks_have_the_exact_sparsity_and_rank_by_weight_times_meta_gradient():
  # Large weights in columns 0-1 do not affect the loss; small ones in columns 2-3 do.
  params = {'Dense_0': {'kernel': jnp.array([[10.0, -9.0, 0.1, -0.2], [8.0, 7.0, 0.3, 0.2]]),
                        'bias': jnp.zeros((4,))}}

  def loss_fn(p, inputs, targets):
    del inputs, targets
    return 100.0 * jnp.sum(p['Dense_0']['kernel'][:, 2:] ** 2)

  zeros = jnp.zeros((3, 2, 1))
  tasks = types.TaskBatch(zeros, zeros, zeros, zeros)
  # snip_loss reads the learner and its inner settings off the experiment: MAML on this loss, one tiny step.
  exp = pytypes.SimpleNamespace(learner=learners.get_learner('maml', loss_fn=loss_fn),
                                settings=InnerSettings(inner_lr=1e-4, num_inner_steps=1))
  meta_loss = baselines.snip_loss(exp, {'params': params, 'gate_logits': None}, tasks)
  snip = baselines.snip_masks(params, meta_loss, 0.5)
  magnitude = baselines.magnitude_masks(params, 0.5)
  test_utils.assert_equal(snip['Dense_0']['kernel'], [[0, 0, 1, 1], [0, 0, 1, 1]])
  test_utils.assert_equal(magnitude['Dense_0']['kernel'], [[1, 1, 0, 0], [1, 1, 0, 0]])
  assert snip['Dense_0']['bias'] is None


def test_snip_on_the_sinusoid_meta_loss_has_the_exact_sparsity():
  exp = baselines.dense_experiment(_config())
  state = exp.init_state()
  tasks = exp.problem.train_sampler(jax.random.key(5), 4)
  meta_loss = baselines.snip_loss(exp, state.meta_params, tasks)
  for target in (0.3, 0.9):
    masks = baselines.snip_masks(state.meta_params['params'], meta_loss, target)
    zeros = sum(int(jnp.sum(m == 0)) for m in jax.tree.leaves(masks))
    test_utils.assert_equal(zeros, int(np.floor(target * 80 + 0.5)))


def test_gradual_magnitude_reaches_the_target_on_schedule_without_retracing(monkeypatch):
  config = _config()
  counter = test_utils.CompileCounter()
  real_get_problem = problems.get_problem

  def counted_problem(config):  # build's problem, with a train_sampler that runs once per trace.
    problem = real_get_problem(config)
    return problem._replace(train_sampler=counter.wrap(problem.train_sampler))
  monkeypatch.setattr(problems, 'get_problem', counted_problem)
  exp = baselines.dense_experiment(config)
  seen = []
  state = baselines.gradual_magnitude(exp, on_mask_update=lambda step, masks: seen.append(
      (step, float(sparsity.mask_sparsity(masks)))))
  assert counter.count == 1, f'the meta-step was traced {counter.count} times'
  steps, sparsities = zip(*seen)
  assert steps == (3, 5, 7, 9)
  assert all(a <= b for a, b in zip(sparsities, sparsities[1:]))
  # s(t) = 0.7 (1 - (1 - (t - 3) / 6) ** 3) of 80 kernel weights, rounded half up: 0, 39.4 -> 39, 53.9 -> 54, and
  # exactly the target (56) at 75% of the budget.
  test_utils.assert_equal(sparsities, np.float32([0 / 80, 39 / 80, 54 / 80, 56 / 80]))
  test_utils.assert_equal(float(sparsity.mask_sparsity(state.masks)), np.float32(56 / 80))


def test_erk_distribution_keeps_small_layers_denser():
  params = baselines.dense_experiment(_config()).init_state()
  masks = baselines.random_masks(jax.random.key(0), params.meta_params['params'], 0.8, scope='layerwise',
                                 distribution='erk')
  density = {name: float(jnp.mean(m)) for name, m in _kernels(masks).items()}
  assert density['Dense_0'] > density['Dense_1'] and density['Dense_2'] > density['Dense_1']


def test_held_out_evaluation_uses_the_tasks_of_experiment_evaluate():
  config = _config()
  exp = baselines.dense_experiment(config)
  state = exp.init_state()
  ones = baselines.ones_masks(state.meta_params['params'])
  masked = baselines.with_masks(state, ones)  # As frontier.run_point evaluates a baseline.
  ours = evaluation.summarise_held_out(config, evaluation.held_out_traces(
      config, exp.problem, exp.eval_learner, exp.eval_settings, masked.meta_params, gate_mode='off',
      fixed_masks=masked.masks))
  reference = exp.evaluate(state.meta_params)['dense']
  assert ours == reference
  assert exp.evaluate(masked.meta_params, fixed_masks=masked.masks)['sparse'] == reference  # All-ones masks.


@pytest.mark.parametrize('method', ['magnitude_finetune', 'gradual_magnitude', 'snip', 'random', 'filter_finetune'])
def test_omniglot_protonet_baselines_prune_the_conv_weights_and_keep_the_head(method):
  if not os.path.isdir(shared_data.OMNIGLOT_DIR):
    pytest.skip('shared Omniglot data missing')
  config = omniglot_tiny.get_config()  # Conv-2 of width 8 on 16x16 images; gates.dense_layers=('head',).
  config.task.data_dir = shared_data.OMNIGLOT_DIR
  config.algorithm = 'protonet'
  config.sparsity.target_sparsity = 0.75
  config.pruning.prune_scope = 'layerwise'
  config.pruning.prune_distribution = 'erk'
  config.pruning.snip_num_tasks = 2
  config.pruning.gradual_update_every_steps = 1
  exp = baselines.dense_experiment(config)
  state = baselines.run_baseline(method, exp)
  assert int(state.step) == config.outer.num_outer_steps
  masks, params = state.masks, state.meta_params['params']
  assert np.all(np.asarray(masks['head']['kernel']) == 1.0)  # gates.dense_layers: never pruned.
  conv = [np.asarray(params[name]['kernel']) for name in ('conv_0', 'conv_1')]
  zeros = sum(int(np.sum(k == 0.0)) for k in conv)
  test_utils.assert_close(zeros / sum(k.size for k in conv), 0.75, atol=0.01)
  for name in ('conv_0', 'conv_1'):
    assert np.all(np.asarray(params[name]['kernel'])[np.asarray(masks[name]['kernel']) == 0] == 0.0), name
  if method == 'filter_finetune':  # Whole filters: 6 of 8 output channels of each conv layer.
    kept = [int(np.sum(np.any(k.reshape(-1, k.shape[-1]) != 0, axis=0))) for k in conv]
    assert kept == [2, 2]
  accuracy = exp.evaluate(state.meta_params, fixed_masks=masks)['sparse/accuracy']['ways_3_shots_1']['step_0']
  assert 0.0 <= accuracy['mean'] <= 1.0


@pytest.mark.parametrize('algorithm', ['fomaml', 'reptile'])
def test_baselines_meta_train_with_the_configured_algorithm(algorithm):
  config = _config()
  config.algorithm = algorithm
  config.gates.mask = 'hard_concrete'  # dense_experiment drops the gates, keeps the algorithm.
  exp = baselines.dense_experiment(config)
  assert exp.learner.name == algorithm and exp.eval_learner.name == algorithm
  assert exp.config.gates.mask == 'none' and exp.gates.name == 'none'
  config.outer.num_outer_steps = 3
  state = baselines.run_baseline('random', baselines.dense_experiment(config))
  assert int(state.step) == 3
  test_utils.assert_all_finite(state.meta_params['params'])


def test_bad_names_and_fields_are_reported():
  with pytest.raises(ValueError, match='valid baselines: ' + ', '.join(baselines.BASELINES)):
    baselines.run_baseline('obd', baselines.dense_experiment(_config()))
  with pytest.raises(ValueError, match='--config.pruning.prune_scope'):
    baselines.run_baseline('random', baselines.dense_experiment(_config(prune_scope='per_row')))
  with pytest.raises(ValueError, match='prune_distribution'):
    baselines.run_baseline('random', baselines.dense_experiment(_config(prune_distribution='erk')))  # Layerwise.
  with pytest.raises(ValueError, match='gradual_end_fraction'):
    baselines.run_baseline('gradual_magnitude', baselines.dense_experiment(_config(gradual_end_fraction=1.5)))
  gated = _config()
  gated.gates.mask = 'hard_concrete'
  with pytest.raises(ValueError, match='gates.mask=none'):  # A gated experiment is refused.
    baselines.run_baseline('random', build.build(gated))
