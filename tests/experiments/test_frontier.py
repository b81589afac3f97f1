"""The frontier driver: a tiny grid end to end, resume by skipping finished points, pooled aggregation."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import frontier
from experiments import frontier_report
from experiments.configs import frontier_sinusoid
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


def _record(method, sparsity, seed, values, before):
  stats = {'mean': float(np.mean(values)), 'ci95': 0.0, 'num_diverged': 0}
  return {'method': method, 'target_sparsity': sparsity, 'seed': seed, 'realised_sparsity': sparsity,
          'nonzero_params': 10, 'total_params': 20, 'dense_flops': 40, 'effective_flops': 20, 'wall_seconds': 1.0,
          'eval': {'shots_5': {'step_1': stats}},
          'per_task': {'shots_5': {'step_0': before, 'step_1': values}}}


def test_aggregate_pools_tasks_over_seeds_and_margins_need_separated_intervals():
  config = _tiny_config()
  config.eval.steps = (1,)
  before = [10.0] * 4
  records = [_record('hard_concrete', 0.9, 0, [1.0, 1.1, 0.9, 1.0], before),
             _record('hard_concrete', 0.9, 1, [1.2, 1.3, 1.1, 1.2], before),
             _record('random', 0.9, 0, [3.0, 3.1, 2.9, 3.0], before),
             _record('random', 0.9, 1, [1.1, 1.4, 1.0, 1.3], before + [])]
  records[3]['per_task']['shots_5']['step_1'][0] = 500.0  # > 10x its loss before: diverged, left out.
  rows = frontier_report.aggregate(config, records)
  hc = rows[0]['eval']['shots_5']['step_1']
  test_utils.assert_close(hc['mean'], np.mean([1.0, 1.1, 0.9, 1.0, 1.2, 1.3, 1.1, 1.2]))
  test_utils.assert_close(hc['seed_sd'], np.std([1.0, 1.2], ddof=1))
  rnd = rows[1]['eval']['shots_5']['step_1']
  assert rnd['num_diverged'] == 1 and rnd['num_tasks'] == 8
  test_utils.assert_close(rnd['mean'], np.mean([3.0, 3.1, 2.9, 3.0, 1.4, 1.0, 1.3]))
  (margin,) = frontier_report.margins(config, rows)
  # The margin compares the 7 tasks neither method diverged on: seed 1's task 0 leaves both means.
  common_hc, common_rnd = [1.0, 1.1, 0.9, 1.0, 1.3, 1.1, 1.2], [3.0, 3.1, 2.9, 3.0, 1.4, 1.0, 1.3]
  test_utils.assert_close(margin['reference_mean'], np.mean(common_hc))
  test_utils.assert_close(margin['baseline_mean'], np.mean(common_rnd))
  test_utils.assert_close(margin['margin'], np.mean(common_rnd) - np.mean(common_hc))
  test_utils.assert_close(margin['reference_ci95'], 1.96 * np.std(common_hc, ddof=1) / np.sqrt(7))
  assert margin['num_common'] == 7 and margin['reference_num_diverged'] == 0 and margin['baseline_num_diverged'] == 1
  assert margin['separated']  # 1.09 +- 0.09 against 2.24 +- 0.69.
  records[2]['per_task']['shots_5']['step_1'] = [1.0, 1.9, 0.4, 1.6]  # Now the intervals overlap.
  (margin,) = frontier_report.margins(config, frontier_report.aggregate(config, records))
  assert margin['margin'] > 0 and not margin['separated']
  records[2]['per_task']['shots_5']['step_1'] = [0.10, 0.11, 0.09, 0.10]  # The baseline now wins clearly.
  records[3]['per_task']['shots_5']['step_1'] = [0.10, 0.12, 0.08, 0.10]
  (margin,) = frontier_report.margins(config, frontier_report.aggregate(config, records))
  assert margin['margin'] < 0 and margin['separated']


def test_margins_compare_only_the_seeds_both_methods_ran():
  config = _tiny_config()
  config.eval.steps = (1,)
  before = [10.0] * 2
  records = [_record('hard_concrete', 0.9, 0, [1.0, 2.0], before),
             _record('hard_concrete', 0.9, 1, [5.0, 6.0], before),
             _record('random', 0.9, 1, [3.0, 4.0], before)]  # Seed 0 of random failed.
  (margin,) = frontier_report.margins(config, frontier_report.aggregate(config, records))
  assert margin['num_common'] == 2 and margin['reference_mean'] == 5.5 and margin['baseline_mean'] == 3.5


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
  assert "--task='omniglot_nope' has no frontier; valid tasks: sinusoid" in result.stderr


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


def test_meta_pruner_point_evaluates_each_task_with_its_own_mask(tmp_path):
  config = _tiny_config()
  config.gates.meta_pruner_hidden_sizes = (8,)
  config.gates.meta_pruner_embed_dim = 4
  record = frontier.run_point(config, 'meta_pruner', 0.5, 0, str(tmp_path))
  assert record['method'] == 'meta_pruner'
  over_tasks = record['realised_sparsity_over_tasks']
  assert 0.5 <= over_tasks['min'] <= over_tasks['max'] < 0.52
  assert record['eval']['shots_5'] == record['train_run_eval']['shots_5']
