"""The rl allocation: candidates vmapped = looped, rewards on validation tasks only, the frontier methods end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import allocation
from experiments import allocation_report
from experiments import baselines
from experiments import build as build_lib
from experiments import evaluation
from experiments import frontier
from experiments import problems
from experiments.configs import frontier_sinusoid
from experiments.configs import omniglot
from experiments.configs import omniglot_tiny
from metaprune_jax import flops
from metaprune_jax.nets import conv
from metaprune_jax.pruning import controller as controller_lib
from tests import shared_data
from tests import test_utils


def _config():
  """``frontier_sinusoid`` at the sizes of ``configs/smoke.py`` (2x8 MLP), a few controller episodes."""
  config = frontier_sinusoid.get_config()
  config.model.hidden_sizes = (8, 8)
  config.outer.meta_batch_size = 4
  config.outer.num_outer_steps = 10
  config.eval.num_tasks = 10
  config.eval.steps = (1, 2)
  config.run.log_every_steps = 5
  config.run.checkpoint_every_steps = 10
  config.sparsity.target_sparsity = 0.9
  config.pruning.rl_episodes = 3
  config.pruning.rl_candidates = 3
  config.pruning.rl_finetune_steps = 2
  config.pruning.rl_validation_tasks = 4
  config.frontier.methods = ('rl',)
  config.frontier.sparsities = (0.9,)
  config.frontier.seeds = (0,)
  return config


@pytest.fixture(scope='module')
def dense():
  exp = baselines.dense_experiment(_config())
  state, _ = baselines._setup(exp)  # pylint: disable=protected-access
  return exp, state


def test_rewards_vmapped_over_candidates_equal_a_python_loop(dense):
  exp, state = dense
  counts = jnp.asarray([[8, 24, 8], [4, 32, 4], [8, 30, 2]], jnp.int32)  # Of (8, 64, 8) kernel weights.
  rewards = jax.jit(lambda s, c: allocation.reward_fn(exp, s, 0)(c))
  batched = rewards(state, counts)
  looped = [float(rewards(state, counts[i:i + 1])[0]) for i in range(3)]
  test_utils.assert_close(batched, looped, rtol=1e-5, atol=1e-6)
  assert len(set(np.round(looped, 6))) == 3  # The allocation changes the reward.


def test_an_episode_compiles_once_and_keeps_the_budget(dense):
  exp, state = dense
  budget = allocation.budget_for(exp.config, state.meta_params['params'])
  controller = allocation.make_controller(exp.config, budget)
  run_episode = allocation.episode_fn(exp, controller)
  params = state.meta_params['params']
  controller_state = controller.init(jax.random.key(0), allocation.initial_mean(exp.config, params))
  for episode in range(2):
    controller_state, metrics = run_episode(controller_state, state, jnp.asarray(episode, jnp.int32), None)
  assert run_episode._cache_size() == 1  # pylint: disable=protected-access
  assert budget.total == 8
  test_utils.assert_equal(np.asarray(metrics['controller/counts']).sum(axis=1), [8, 8, 8])
  assert int(controller_state.episode) == 2


def test_the_reward_draws_validation_tasks_never_the_evaluation_tasks(dense, monkeypatch):
  exp, state = dense
  config = exp.config
  seen = []

  def recording_sampler(key, num_tasks, shots, **kwargs):
    jax.debug.callback(lambda data: seen.append(np.asarray(data)), jax.random.key_data(key))
    return exp.problem.eval_sampler(key, num_tasks, shots, **kwargs)

  def refuse(*args, **kwargs):
    raise AssertionError('the controller asked for the evaluation tasks')

  monkeypatch.setattr(evaluation, 'held_out_tasks', refuse)
  recording = exp._replace(problem=exp.problem._replace(eval_sampler=recording_sampler))
  allocation.search(recording, state)
  jax.effects_barrier()
  assert len(seen) == config.pruning.rl_episodes
  eval_keys = [np.asarray(jax.random.key_data(jax.random.fold_in(
      jax.random.fold_in(jax.random.key(config.seed), evaluation.EVAL_KEY_SALT), shots))) for shots in (1, 5, 10)]
  for data in seen:
    assert not any(np.array_equal(data, e) for e in eval_keys)
  monkeypatch.undo()
  held_out = evaluation.held_out_tasks(config, exp.problem, int(config.eval.shots[0]))
  validation = allocation.validation_tasks(config, exp.problem, 0)
  assert not np.any(np.isin(np.asarray(validation.query_inputs), np.asarray(held_out.query_inputs)))
  assert allocation.VALIDATION_KEY_SALT not in (evaluation.EVAL_KEY_SALT, allocation.FINETUNE_KEY_SALT,
                                                baselines.SNIP_KEY_SALT, baselines.RANDOM_KEY_SALT)


def test_the_rl_frontier_point_records_its_allocation_and_reward_curve(tmp_path):
  config = _config()
  record = frontier.run_point(config, 'rl', 0.9, 0, str(tmp_path))
  controller = record['controller']
  assert controller['layers'] == ['Dense_0/kernel', 'Dense_1/kernel', 'Dense_2/kernel']
  assert sum(controller['counts']) == controller['budget_total'] == 8  # 10% of 80 kernel weights.
  assert list(record['kept_per_layer'].values()) == controller['counts']
  assert len(controller['history']['reward_mean']) == 3 and controller['converged_episode'] in (1, 2, 3)
  assert controller['reference_allocations'] == {'uniform': [1, 6, 1], 'erk': [2, 4, 2]}
  assert (tmp_path / 'points' / 'rl_s0.9_seed0_controller.png').exists()
  test_utils.assert_close(record['realised_sparsity'], 0.9)


def test_the_flops_budget_counts_kernel_multiply_adds_beside_the_fixed_bias_adds(dense):
  exp, state = dense
  params = state.meta_params['params']
  config = _config()
  config.pruning.budget = 'flops'
  config.sparsity.target_sparsity = 0.5
  budget = allocation.budget_for(config, params)
  dense_flops, bias_flops = 2 * 80 + 17, 17  # Kernels (8, 64, 8) and biases 8 + 8 + 1.
  assert budget.costs == (2, 2, 2) and budget.total == int(0.5 * dense_flops) - bias_flops
  counts = allocation.reference_allocations(config, params, budget)['uniform']
  assert 2 * sum(counts) + bias_flops <= 0.5 * dense_flops < 2 * sum(counts) + bias_flops + 2
  config.sparsity.target_sparsity = 0.95  # Bias adds alone exceed 5% of the dense FLOPs.
  with pytest.raises(ValueError, match='outside'):
    allocation.budget_for(config, params)


def test_rl_refuses_bad_fields_and_tasks_by_name():
  config = _config()
  config.pruning.budget = 'weights'
  with pytest.raises(ValueError, match=r'--config.pruning.budget=.weights. is invalid'):
    build_lib.check(config)
  config = _config()
  config.pruning.rl_candidates = 1
  with pytest.raises(ValueError, match='pruning.rl_candidates'):
    build_lib.check(config)
  config = _config()
  config.task.name = 'sequence'
  with pytest.raises(ValueError, match='--task=sequence'):
    allocation.check_task(config)


def test_the_l0_point_copies_the_allocation_of_the_hard_concrete_point(tmp_path):
  config = _config()
  gated = frontier.run_point(config, 'hard_concrete', 0.9, 0, str(tmp_path))
  copied = frontier.run_point(config, 'l0', 0.9, 0, str(tmp_path))
  assert copied['kept_per_layer'] == gated['kept_per_layer']
  assert sum(copied['kept_per_layer'].values()) == 8
  counts, gate_logits = allocation.l0_gates(frontier.point_config(config, 'l0', 0.9, 0))
  assert counts == list(gated['kept_per_layer'].values())
  assert gate_logits['Dense_1']['kernel'].shape == (8, 8) and gate_logits['Dense_1']['bias'] is None


def _point(workdir, method, values, distribution='erk'):
  """A point record in ``workdir`` (one seed, 5-shot, one inner step) and the workdir's config.json."""
  os.makedirs(os.path.join(workdir, 'points'), exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump({'pruning': {'prune_distribution': distribution, 'rl_init': 'erk'}}, f)
  record = {'method': method, 'target_sparsity': 0.95, 'seed': 0, 'kept_per_layer': {'a': 1, 'b': 2},
            'per_task': {'shots_5': {'step_0': [10.0] * len(values), 'step_1': values}}}
  with open(os.path.join(workdir, 'points', f'{method}.json'), 'w') as f:
    json.dump(record, f)


def test_the_allocation_report_labels_points_and_pairs_tasks_per_seed(tmp_path):
  _point(str(tmp_path / 'erk'), 'magnitude_finetune', [2.0, 3.0, 4.0, 500.0])  # Task 3 diverged.
  _point(str(tmp_path / 'erk'), 'rl', [1.0, 2.0, 3.0, 1.0])
  _point(str(tmp_path / 'uniform'), 'magnitude_finetune', [1.1, 2.1, 2.9, 1.0], distribution='uniform')
  rows = allocation_report.compare(allocation_report.load_points([str(tmp_path / 'erk'), str(tmp_path / 'uniform')]),
                                   'rl[erk]')
  by_label = {r['label']: r for r in rows}
  assert sorted(by_label) == ['erk', 'rl[erk]', 'uniform'] and 'margin' not in by_label['rl[erk]']
  erk = by_label['erk']
  assert erk['num_common'] == 3 and erk['num_diverged'] == 1
  test_utils.assert_close(erk['margin'], 1.0)
  test_utils.assert_close(erk['paired_ci95'], 0.0)  # Every common task 1.0 worse: a sure margin.
  assert not erk['separated']  # The unpaired CIs overlap.
  assert '| 0.95 | 0 | 5 | 1 | erk | [1, 2] |' in allocation_report.format_markdown(rows, 'rl[erk]')


# ---------------------------------------------------------------------------
# The Omniglot Conv-4.


def _conv4_config(budget='flops', sparsity=0.9):
  """``omniglot.py`` (Conv-4 of width 64 on 28x28 images, the head in ``gates.dense_layers``) at a budget."""
  config = omniglot.get_config()
  config.pruning.budget = budget
  config.sparsity.target_sparsity = sparsity
  return config


def _conv4_params(config):
  return conv.init_conv4(jax.random.key(0), image_size=int(config.task.image_size),
                         width=int(config.model.conv_width), depth=int(config.model.conv_depth), num_classes=5)


def test_the_conv4_flops_budget_costs_a_weight_its_output_pixels_and_keeps_the_head():
  config = _conv4_config(sparsity=0.9)
  params = _conv4_params(config)
  budget = allocation.budget_for(config, params)
  # 28x28 -> 14 -> 7 -> 3 output pixels per conv layer (SAME convs, 2x2 pools); the head costs 2 per weight.
  assert budget.sizes == (9 * 64, 9 * 64 * 64, 9 * 64 * 64, 9 * 64 * 64, 64 * 5)
  assert budget.costs == (2 * 28 * 28, 2 * 14 * 14, 2 * 7 * 7, 2 * 3 * 3, 2)
  assert budget.min_kept == (1, 1, 1, 1, 64 * 5)  # The head (gates.dense_layers) is kept whole.
  dense = flops.conv4_flops(params, image_size=28)['dense_flops']
  assert dense == 2 * (784 * 576 + (196 + 49 + 9) * 36864) + 2 * 320 + 5
  assert budget.total == int(0.1 * dense) - 5  # The head's bias adds are the fixed FLOPs.


@pytest.mark.parametrize('sparsity', [0.8, 0.9])
def test_masks_of_conv4_allocations_spend_the_flops_budget_to_the_flop(sparsity):
  config = _conv4_config(sparsity=sparsity)
  params = _conv4_params(config)
  budget = allocation.budget_for(config, params)
  dense = flops.conv4_flops(params, image_size=28)['dense_flops']
  costs = np.asarray(budget.costs)
  rng = np.random.default_rng(int(sparsity * 10))
  allocations = dict(allocation.reference_allocations(config, params, budget))
  for i, logits in enumerate(rng.normal(size=(4, 5)) * 3.0):
    allocations[f'random_{i}'] = [int(k) for k in controller_lib.project(logits, budget)]
  for name, counts in allocations.items():
    masks = allocation.allocation_masks(params, counts)
    spent = int(costs @ np.asarray(counts))
    assert flops.conv4_flops(params, masks, image_size=28)['effective_flops'] == spent + 5, name  # Bias adds: 5.
    assert spent <= budget.total, name
    # Nothing left that one more weight of a layer that is not full would pay for.
    open_layers = np.asarray(counts) < np.asarray(budget.sizes)
    assert not np.any(open_layers & (costs <= budget.total - spent)), (name, counts)
    assert spent + 5 <= (1.0 - sparsity) * dense < spent + 5 + costs[open_layers].max(), name
    assert counts[-1] == 64 * 5 and list(allocation.kept_per_layer(params, masks).values()) == counts, name
  assert allocations['uniform'] != allocations['erk']


def test_the_conv4_params_budget_prunes_the_conv_weights_only():
  config = _conv4_config(budget='params', sparsity=0.9)
  params = _conv4_params(config)
  budget = allocation.budget_for(config, params)
  conv_weights = 576 + 3 * 36864
  assert budget.costs == (1,) * 5 and budget.total == conv_weights - int(np.floor(0.9 * conv_weights + 0.5)) + 320
  for name, counts in allocation.reference_allocations(config, params, budget).items():
    assert counts[-1] == 320, name
    if name == 'uniform':
      assert sum(counts) == budget.total
  masks = allocation.allocation_masks(params, allocation.erk_counts(config, params))
  kept = sum(list(allocation.kept_per_layer(params, masks).values())[:4])
  assert abs(kept - (budget.total - 320)) <= 4  # ERK rounds each layer's count on its own.


def _omniglot_config():
  """``omniglot_tiny`` as a dense ProtoNet (16x16 images, Conv-2 of width 8), a FLOPs budget of 10%."""
  config = omniglot_tiny.get_config()
  config.task.data_dir = shared_data.OMNIGLOT_DIR
  config.algorithm = 'protonet'
  config.pruning.budget = 'flops'
  config.sparsity.target_sparsity = 0.9
  config.pruning.rl_episodes = 2
  config.pruning.rl_candidates = 3
  config.pruning.rl_finetune_steps = 2
  config.pruning.rl_validation_tasks = 6
  return config


@pytest.fixture(scope='module')
def omniglot_dense():
  if not os.path.isdir(shared_data.OMNIGLOT_DIR):
    pytest.skip('shared Omniglot data missing')
  exp = baselines.dense_experiment(_omniglot_config())
  state, step = baselines._setup(exp)  # pylint: disable=protected-access
  for _ in range(6):
    state, _ = step(state)
  return exp, state


def test_the_omniglot_reward_is_validation_accuracy_higher_for_more_weights(omniglot_dense):
  exp, state = omniglot_dense
  params = state.meta_params['params']
  budget = allocation.budget_for(exp.config, params)
  assert allocation.host_loop(exp.config)  # Dense ProtoNet: native convs, fine-tuned by a host loop.
  starved = list(budget.min_kept)  # One weight per conv layer: every embedding nearly the same.
  counts = jnp.asarray([starved, allocation.reference_allocations(exp.config, params, budget)['uniform']])
  rewards = np.asarray(allocation.host_reward_fn(exp)(state, jnp.asarray(0, jnp.int32), None, counts))
  assert np.all((rewards >= 0.0) & (rewards <= 1.0))  # Accuracies, not minus losses.
  assert rewards[1] > rewards[0] + 0.1, rewards
  jitted = jax.jit(lambda s, c: allocation.reward_fn(exp, s, 0)(c))(state, counts)  # One jit, candidates vmapped.
  test_utils.assert_close(jitted, rewards, atol=1e-6)
  # eval.split='test': the reward's episodes come from the validation characters, none from the test split's.
  assert exp.config.eval.split == 'test'
  tasks = allocation.validation_tasks(exp.config, exp.problem, 0)
  test_images = np.asarray(problems.load_omniglot_splits(exp.config).test.images, np.float32) / 255.0
  test_rows = {image.tobytes() for image in test_images.reshape(-1, *test_images.shape[-3:])}
  assert not any(np.asarray(image, np.float32).tobytes() in test_rows
                 for image in np.asarray(tasks.query_inputs).reshape(-1, *tasks.query_inputs.shape[-3:]))


def test_an_omniglot_search_keeps_the_flops_budget_and_records_the_reward(omniglot_dense):
  exp, state = omniglot_dense
  result = allocation.search(exp, state)
  assert result.reward == 'accuracy' and result.layers == ['conv_0/kernel', 'conv_1/kernel', 'head/kernel']
  spent = int(np.asarray(result.budget.costs) @ np.asarray(result.counts))
  assert spent <= result.budget.total and result.counts[-1] == result.budget.sizes[-1]
  params = state.meta_params['params']
  masks = allocation.allocation_masks(params, result.counts)
  assert flops.conv4_flops(params, masks, image_size=16)['effective_flops'] == spent + 3
  record = allocation.summary(exp.config, result, params)
  assert record['reward'] == 'accuracy' and len(record['history']['rewards']) == 2


@pytest.mark.parametrize('method', ['uniform_budget', 'erk_budget'])
def test_the_fixed_rules_as_baselines_spend_the_omniglot_flops_budget(omniglot_dense, method):
  del omniglot_dense  # Only its skip when the shared data is missing.
  config = _omniglot_config()
  config.outer.num_outer_steps = 4
  exp = baselines.dense_experiment(config)
  seen = []
  state = baselines.run_baseline(  # A copy of the masks: the step donates the state's buffers.
      method, exp, on_mask_update=lambda step, masks: seen.append((step, jax.device_get(masks))))
  assert [step for step, _ in seen] == [2] and int(state.step) == 4
  params = state.meta_params['params']
  budget = allocation.budget_for(config, params)
  rule = method.split('_')[0]
  counts = allocation.reference_allocations(config, params, budget)[rule]
  kept = list(allocation.kept_per_layer(params, seen[0][1]).values())
  assert kept == counts, (method, kept, counts)
  spent = int(np.asarray(budget.costs) @ np.asarray(kept))
  assert flops.conv4_flops(params, seen[0][1], image_size=16)['effective_flops'] == spent + 3 <= budget.total + 3
  for layer in ('conv_0', 'conv_1'):  # Pruned weights stay exactly zero through the fine-tune.
    kernel, mask = np.asarray(params[layer]['kernel']), np.asarray(seen[0][1][layer]['kernel'])
    assert 0 < np.count_nonzero(mask) < mask.size and np.all(kernel[mask == 0] == 0.0), layer


def test_the_allocation_report_reads_accuracies_higher_is_better(tmp_path):
  for method, accuracies in (('rl', [1.0, 0.8, 0.6]), ('magnitude_finetune', [0.8, 0.6, 0.6])):
    _point(str(tmp_path), method, [1.0, 1.0, 1.0])
    path = tmp_path / 'points' / f'{method}.json'
    record = json.loads(path.read_text())
    record['per_task'] = {'shots_1': {'step_0': [1.0] * 3}}  # A ProtoNet records step 0 only.
    record['per_task_accuracy'] = {'shots_1': {'step_0': accuracies}}
    path.write_text(json.dumps(record))
  rows = allocation_report.compare(allocation_report.load_points([str(tmp_path)]), 'rl[erk]')
  erk = {r['label']: r for r in rows}['erk']
  assert erk['metric'] == 'accuracy' and erk['step'] == 'step_0'
  test_utils.assert_close(erk['margin'], 0.4 / 3)  # rl 0.8 against ERK 0.667: positive, rl better.
  assert 'query accuracy' in allocation_report.format_markdown(rows, 'rl[erk]')


def test_at_a_flops_budget_the_l0_counts_are_the_gates_keep_ratios_on_that_budget():
  config = _config()
  config.sparsity.target_sparsity = 0.5
  params_counts, _ = allocation.l0_gates(config)
  config.pruning.budget = 'flops'
  counts, _ = allocation.l0_gates(config)
  params = baselines.dense_experiment(config).init_state().meta_params['params']
  budget = allocation.budget_for(config, params)
  assert budget.total == int(0.5 * (2 * 80 + 17)) - 17 == 71  # Kernels (8, 64, 8), biases 8 + 8 + 1.
  assert sum(params_counts) == 40 and sum(counts) == 35  # Half the kernel weights; half the FLOPs, bias adds fixed.
