"""The frontier: a tiny grid end to end, resume, across-seed t-intervals, paired margins, a tiny Omniglot frontier."""

import csv
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from experiments import frontier
from experiments import frontier_report
from experiments import frontier_stats
from experiments.configs import frontier_omniglot
from experiments.configs import frontier_omniglot_full
from experiments.configs import frontier_sinusoid
from tests import shared_data
from tests import test_utils


def _tiny_config():
  config = frontier_sinusoid.get_config()
  config.model.hidden_sizes = (8, 8)
  config.outer.meta_batch_size = 4
  config.outer.num_outer_steps = 10
  config.eval.num_tasks = 10
  config.eval.steps = (1, 2)
  config.run.log_every_steps = 5
  config.run.checkpoint_every_steps = 10
  config.pruning.snip_num_tasks = 4
  config.frontier.methods = ('hard_concrete', 'random')
  config.frontier.sparsities = (0.5, 0.9)
  config.frontier.seeds = (0,)
  return config


def test_tiny_grid_writes_outputs_and_a_restart_skips_finished_points(tmp_path):
  config, workdir = _tiny_config(), str(tmp_path)
  first = frontier.run_frontier(config, workdir)
  names = ['hard_concrete_s0.5_seed0', 'random_s0.5_seed0', 'hard_concrete_s0.9_seed0', 'random_s0.9_seed0']
  assert first['ran'] == names and not first['failures']
  for name in ('frontier.csv', 'frontier.md', 'frontier.png', 'config.json'):
    assert (tmp_path / name).exists(), name
  assert sorted(os.listdir(tmp_path / 'points')) == sorted(f'{n}.json' for n in names)

  with open(tmp_path / 'frontier.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == (4 + 4) * 2  # (points + aggregates) x eval steps.
  random_point = next(r for r in rows if r['kind'] == 'point' and r['method'] == 'random'
                      and r['target_sparsity'] == '0.9' and r['step'] == '2')
  test_utils.assert_close(float(random_point['realised_sparsity']), 72 / 80)  # Exact for fixed masks.
  assert int(random_point['effective_flops']) < int(random_point['dense_flops'])
  markdown = (tmp_path / 'frontier.md').read_text()
  assert '| random |' in markdown and 's=0.9' in markdown and 'Margins of hard_concrete' in markdown

  # The hard-concrete point's own evaluation agrees with train.run's summary (same held-out tasks).
  record = frontier.load_point(config, workdir, 'hard_concrete', 0.5, 0)
  assert record['eval']['shots_5'] == record['train_run_eval']['shots_5']

  stamp = os.path.getmtime(tmp_path / 'points' / 'random_s0.9_seed0.json')
  os.remove(tmp_path / 'points' / 'random_s0.5_seed0.json')
  second = frontier.run_frontier(config, workdir)
  assert second['ran'] == ['random_s0.5_seed0']
  assert sorted(second['skipped']) == sorted(set(names) - {'random_s0.5_seed0'})
  assert os.path.getmtime(tmp_path / 'points' / 'random_s0.9_seed0.json') == stamp

  changed = _tiny_config()
  changed.outer.num_outer_steps = 11
  with pytest.raises(ValueError, match='different config'):
    frontier.run_frontier(changed, workdir)


def _record(method, sparsity, seed, values, before=None, accuracy=None):
  """A point record with per-task losses ``values`` (before adapting: ``before``, default 10) at 5 shots, one step."""
  before = [10.0] * len(values) if before is None else before
  record = {'name': frontier.point_name(method, sparsity, seed), 'method': method, 'target_sparsity': sparsity,
            'seed': seed, 'realised_sparsity': sparsity, 'nonzero_params': 10, 'total_params': 20, 'dense_flops': 40,
            'effective_flops': 20, 'wall_seconds': 1.0,
            'per_task': {'shots_5': {'step_0': list(before), 'step_1': list(values)}}}
  if accuracy is not None:
    record['per_task_accuracy'] = {'shots_5': {'step_0': [0.2] * len(accuracy), 'step_1': list(accuracy)}}
  return record


def _one_step_config(metric='loss'):
  config = _tiny_config()
  config.eval.steps = (1,)
  config.frontier.metric = metric
  return config


# Two-sided 95% Student-t quantiles t(0.975, dof), from tables.
_T975 = {1: 12.7062047, 2: 4.30265273, 3: 3.18244631}


@pytest.mark.parametrize('num_seeds', [2, 3, 4])
def test_the_across_seed_ci_is_the_t_interval_over_the_per_seed_means(num_seeds):
  rng = np.random.default_rng(num_seeds)
  per_seed = {seed: rng.normal(1.0 + 0.3 * seed, 0.2, size=7 + seed) for seed in range(num_seeds)}  # Unequal sizes.
  records = [_record('snip', 0.9, seed, values) for seed, values in per_seed.items()]
  (row,) = frontier_stats.aggregate(_one_step_config(), records)
  stats = row['eval']['shots_5']['step_1']
  means = [np.mean(v) for v in per_seed.values()]
  half_width = _T975[num_seeds - 1] * np.std(means, ddof=1) / np.sqrt(num_seeds)
  test_utils.assert_close(stats['mean'], np.mean(means))  # Each seed weighs the same, whatever its task count.
  test_utils.assert_close(stats['ci95'], half_width, rtol=1e-7)
  assert stats['ci_over'] == 'seeds' and stats['num_seeds'] == num_seeds
  for seed, values in per_seed.items():  # Per seed: the mean and the normal CI over that seed's tasks.
    seed_stats = row['per_seed']['shots_5']['step_1'][seed]
    test_utils.assert_close(seed_stats['mean'], np.mean(values))
    test_utils.assert_close(seed_stats['ci95'], 1.96 * np.std(values, ddof=1) / np.sqrt(len(values)))
  pooled = np.concatenate(list(per_seed.values()))
  test_utils.assert_close(row['pooled']['shots_5']['step_1']['mean'], np.mean(pooled))  # Secondary, kept in the csv.


def test_one_seed_falls_back_to_the_task_ci_and_marks_it():
  values = [1.0, 1.2, 0.8, 1.1]
  config = _one_step_config()
  rows = frontier_stats.aggregate(config, [_record('hard_concrete', 0.9, 0, values),
                                            _record('random', 0.9, 0, [v + 1.0 for v in values])])
  stats = rows[0]['eval']['shots_5']['step_1']
  test_utils.assert_close(stats['ci95'], 1.96 * np.std(values, ddof=1) / 2.0)
  assert stats['ci_over'] == 'tasks (1 seed)' and np.isnan(stats['seed_sd'])
  (margin,) = frontier_stats.margins(config, rows)
  assert margin['ci_over'] == 'tasks (1 seed)' and margin['verdict'] == 'hard_concrete'
  test_utils.assert_close(margin['margin_ci95'], 0.0, atol=1e-12)  # The same lead on every task.
  assert '1.0250 ± 0.1674 †' in frontier_report.format_markdown(config, rows)


def test_margins_pair_tasks_within_each_seed_and_take_a_t_interval_over_seeds():
  config = _one_step_config()
  hc = {0: [1.0, 2.0, 3.0, 4.0], 1: [2.0, 2.5, 3.0, 3.5], 2: [0.5, 1.5, 1.0, 2.0]}
  lead = {0: [0.5, 0.4, 0.4, 0.4], 1: [0.2, 0.4, 0.3, 0.3], 2: [0.35, 0.35, 0.3, 0.4]}  # Per-task baseline - hc.
  records = [_record('hard_concrete', 0.9, s, v) for s, v in hc.items()]
  records += [_record('random', 0.9, s, np.add(hc[s], lead[s])) for s in hc]
  records[3]['per_task']['shots_5']['step_1'][0] = 500.0  # Random, seed 0, task 0 diverged: both leave it.
  rows = frontier_stats.aggregate(config, records)
  (margin,) = frontier_stats.margins(config, rows)
  differences = [0.4, 0.3, 0.35]
  test_utils.assert_close(margin['per_seed_difference'], differences)
  test_utils.assert_close(margin['margin'], np.mean(differences))
  test_utils.assert_close(margin['margin_ci95'], _T975[2] * np.std(differences, ddof=1) / np.sqrt(3), rtol=1e-7)
  test_utils.assert_close(margin['reference_mean'], np.mean([np.mean(hc[0][1:]), np.mean(hc[1]), np.mean(hc[2])]))
  assert margin['num_common'] == 11 and margin['baseline_num_diverged'] == 1 and margin['reference_num_diverged'] == 0
  assert margin['verdict'] == 'hard_concrete'  # 0.35 +- 0.12: every seed agrees, yet the unpaired CIs overlap.
  hc_stats, random_stats = rows[0]['eval']['shots_5']['step_1'], rows[1]['eval']['shots_5']['step_1']
  assert hc_stats['mean'] + hc_stats['ci95'] > random_stats['mean'] - random_stats['ci95']  # Unpaired: overlap.

  # One seed where the baseline is ahead: the interval straddles zero.
  records[5]['per_task']['shots_5']['step_1'] = list(np.subtract(hc[2], 0.6))
  (margin,) = frontier_stats.margins(config, frontier_stats.aggregate(config, records))
  assert margin['margin'] > 0 and margin['verdict'] == 'neither'
  for seed in hc:  # The baseline better on every seed by the same amount: its verdict.
    records[3 + seed]['per_task']['shots_5']['step_1'] = list(np.subtract(hc[seed], 0.5 + 0.1 * seed))
  (margin,) = frontier_stats.margins(config, frontier_stats.aggregate(config, records))
  assert margin['margin'] < 0 and margin['verdict'] == 'baseline'


def test_accuracy_margins_count_higher_as_better():
  config = _one_step_config('accuracy')
  hc = {0: [0.9, 0.8, 1.0], 1: [0.7, 0.8, 0.9]}
  records = [_record('hard_concrete', 0.9, s, [5.0] * 3, accuracy=v) for s, v in hc.items()]
  records += [_record('snip', 0.9, s, [1.0] * 3, accuracy=np.subtract(v, 0.1 + 0.05 * s)) for s, v in hc.items()]
  rows = frontier_stats.aggregate(config, records)
  test_utils.assert_close(rows[0]['eval']['shots_5']['step_1']['mean'], np.mean([0.9, 0.8]))
  (margin,) = frontier_stats.margins(config, rows)  # Lower losses would favour snip; accuracy favours hc.
  test_utils.assert_close(margin['per_seed_difference'], [0.1, 0.15])
  test_utils.assert_close(margin['margin_ci95'], _T975[1] * np.std([0.1, 0.15], ddof=1) / np.sqrt(2))
  assert margin['direction'] == 'higher' and margin['verdict'] == 'neither'  # 0.125 +- 0.318 with two seeds.
  markdown = frontier_report.format_markdown(config, rows)
  assert '85.00% ± ' in markdown and 'higher accuracy is better' in markdown
  with pytest.raises(ValueError, match='per_task_accuracy'):
    frontier_stats.aggregate(config, [_record('random', 0.9, 0, [1.0])])


def test_margins_compare_only_the_seeds_both_methods_ran():
  config = _one_step_config()
  records = [_record('hard_concrete', 0.9, 0, [1.0, 2.0]),
             _record('hard_concrete', 0.9, 1, [5.0, 6.0]),
             _record('random', 0.9, 1, [3.0, 4.0])]  # Seed 0 of random failed.
  (margin,) = frontier_stats.margins(config, frontier_stats.aggregate(config, records))
  assert margin['seeds'] == [1] and margin['num_common'] == 2
  assert margin['reference_mean'] == 5.5 and margin['baseline_mean'] == 3.5 and margin['verdict'] == 'baseline'


def test_grid_runs_dense_once_per_seed_and_names_points():
  config = _tiny_config()
  config.frontier.methods = ('dense', 'snip')
  config.frontier.seeds = (0, 1)
  assert frontier.grid(config) == [('dense', 0.0, 0), ('snip', 0.5, 0), ('snip', 0.9, 0),
                                   ('dense', 0.0, 1), ('snip', 0.5, 1), ('snip', 0.9, 1)]
  assert frontier.point_name('snip', 0.95, 2) == 'snip_s0.95_seed2'


def test_unknown_method_and_task_list_the_valid_names(tmp_path):
  config = _tiny_config()
  config.frontier.methods = ('hard_concrete', 'optimal_brain_damage')
  with pytest.raises(ValueError, match='valid methods: dense, hard_concrete, meta_pruner, magnitude_finetune'):
    frontier.run_frontier(config, str(tmp_path))
  result = subprocess.run([sys.executable, '-m', 'experiments.frontier', '--task=omniglot_nope',
                           f'--workdir={tmp_path}'], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  assert result.returncode != 0
  assert "--task='omniglot_nope' has no frontier; valid tasks: omniglot, sinusoid" in result.stderr


def test_unknown_override_is_one_line_naming_the_closest_field(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'experiments.frontier', '--task=sinusoid', f'--workdir={tmp_path}',
                           '--config.frontier_seeds=(0,)'], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-2000:]
  assert 'did you mean --config.frontier.seeds?' in result.stderr, result.stderr


def test_fingerprint_ignores_the_grid_and_the_per_point_fields():
  config = _tiny_config()
  point = frontier.point_config(config, 'snip', 0.9, 2)
  point.frontier.seeds = (5, 6)
  assert frontier.fingerprint(point) == frontier.fingerprint(config)
  point.outer.num_outer_steps = 11
  assert frontier.fingerprint(point) != frontier.fingerprint(config)
  assert (point.seed, point.sparsity.target_sparsity, point.gates.mask) == (2, 0.9, 'none')


def test_fields_added_since_at_their_inert_value_keep_the_fingerprint():
  config = _tiny_config()
  older = ml_collections.ConfigDict(config.to_dict())  # As a config written before 'num_seeds' existed.
  del older['num_seeds']
  assert frontier.fingerprint(older) == frontier.fingerprint(config)
  config.num_seeds = 2
  assert frontier.fingerprint(older) != frontier.fingerprint(config)


def test_meta_pruner_point_evaluates_each_task_with_its_own_mask(tmp_path):
  config = _tiny_config()
  config.gates.meta_pruner_hidden_sizes = (8,)
  config.gates.meta_pruner_embed_dim = 4
  record = frontier.run_point(config, 'meta_pruner', 0.5, 0, str(tmp_path))
  assert record['method'] == 'meta_pruner'
  over_tasks = record['realised_sparsity_over_tasks']
  assert 0.5 <= over_tasks['min'] <= over_tasks['max'] < 0.52
  assert record['eval']['shots_5'] == record['train_run_eval']['shots_5']


def _tiny_omniglot_config():
  """``frontier_omniglot.py`` on 16 characters at 16x16, a Conv-2 of width 8, 6 meta-steps, 6 3-way episodes."""
  config = frontier_omniglot.get_config()
  config.task.data_dir = shared_data.OMNIGLOT_DIR
  config.task.cache_dir = ''
  config.task.max_characters_per_alphabet = 2
  config.task.split_sizes = (10, 2, 4)
  config.task.image_size = 16
  config.task.ways = 3
  config.task.queries = 2
  config.model.conv_width = 8
  config.model.conv_depth = 2
  config.outer.num_outer_steps = 6
  config.eval.num_tasks = 6
  config.eval.ways = (3,)
  config.eval.num_query = 3
  config.run.log_every_steps = 3
  config.run.checkpoint_every_steps = 6
  config.pruning.snip_num_tasks = 2
  config.pruning.gradual_update_every_steps = 1
  config.frontier.methods = ('hard_concrete', 'magnitude_finetune')
  config.frontier.sparsities = (0.9,)
  config.frontier.seeds = (0,)
  return config


@pytest.mark.parametrize('get_config', [frontier_omniglot.get_config, frontier_omniglot_full.get_config])
def test_the_omniglot_frontier_configs_are_valid_and_evaluate_on_validation(get_config):
  config = get_config()
  frontier.validate_frontier_config(config)
  assert config.task.name == 'omniglot' and config.eval.split == 'validation'
  assert frontier_stats.metric(config) == 'accuracy' and tuple(config.gates.dense_layers) == ('head',)
  assert config.sparsity.sparsity_warmup_steps == config.outer.num_outer_steps // 5


def test_accuracy_needs_a_classification_task():
  config = _tiny_config()
  config.frontier.metric = 'accuracy'
  with pytest.raises(ValueError, match='needs a classification task'):
    frontier.validate_frontier_config(config)
  config.frontier.metric = 'error'
  with pytest.raises(ValueError, match='valid metrics: loss, accuracy'):
    frontier.validate_frontier_config(config)


def test_a_tiny_omniglot_frontier_reports_accuracy_over_the_conv_weights(tmp_path):
  if not os.path.isdir(shared_data.OMNIGLOT_DIR):
    pytest.skip('shared Omniglot data missing')
  config = _tiny_omniglot_config()
  result = frontier.run_frontier(config, str(tmp_path))
  assert result['ran'] == ['hard_concrete_s0.9_seed0', 'magnitude_finetune_s0.9_seed0'] and not result['failures']
  for record in result['records']:
    accuracy = np.asarray(record['per_task_accuracy']['shots_1']['step_0'])
    assert accuracy.shape == (6,) and np.all((accuracy >= 0) & (accuracy <= 1))
    test_utils.assert_close(accuracy * 9, np.round(accuracy * 9), atol=1e-5)  # 3 ways x 3 queries.
    test_utils.assert_close(record['eval_accuracy']['shots_1']['step_0']['mean'], np.mean(accuracy))
    assert record['kept_per_layer']['head/kernel'] == 4 * 4 * 8 * 3  # Dense: 4x4x8 features (two pools) x 3 ways.
    conv = record['kept_per_layer']['conv_0/kernel'] + record['kept_per_layer']['conv_1/kernel']
    test_utils.assert_close(record['realised_sparsity'], 1 - conv / (9 * 8 + 9 * 64))
    assert abs(record['realised_sparsity'] - 0.9) < 0.01
    assert record['conv_weight_sparsity'] == record['realised_sparsity']  # conv4_flops' count agrees.
  rows = {r['method']: r for r in result['rows']}
  stats = rows['hard_concrete']['eval']['shots_1']['step_0']
  assert stats['ci_over'] == 'tasks (1 seed)' and stats['num_seeds'] == 1
  markdown = (tmp_path / 'frontier.md').read_text()
  assert '## 3-way 1-shot, 0 inner steps (mean ± 95% CI over seeds)' in markdown
  assert 'higher accuracy is better' in markdown and '†' in markdown and 'Margins of hard_concrete' in markdown
  with open(tmp_path / 'frontier.csv') as f:
    lines = list(csv.DictReader(f))
  assert len(lines) == 4 and {line['metric'] for line in lines} == {'accuracy'}
  assert (tmp_path / 'frontier.png').exists()
