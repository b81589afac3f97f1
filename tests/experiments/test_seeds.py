"""``--config.num_seeds``: seeds stacked in one step are each their own run; across-seed statistics."""

import json
import math
import os

import numpy as np
import pytest

from experiments import build
from experiments import seeds
from experiments import train
from experiments.configs import smoke


def _leaves(results, path=()):
  """``{path: leaf summary}`` of an ``evaluate`` result."""
  if 'mean' in results and 'ci95' in results:
    return {path: results}
  return {k: v for name, sub in results.items() for k, v in _leaves(sub, path + (name,)).items()}


@pytest.fixture(scope='module')
def stacked_run(tmp_path_factory):
  config = smoke.get_config()
  config.num_seeds = 2
  workdir = str(tmp_path_factory.mktemp('seeds') / 'stacked')
  return config, workdir, train.run(config, workdir)


def test_each_stacked_seed_reproduces_its_one_seed_run(stacked_run, tmp_path):
  config, _, summary = stacked_run
  assert summary['seeds'] == [0, 1] and [s['seed'] for s in summary['per_seed']] == [0, 1]
  alone = smoke.get_config()
  alone.seed = 1
  single = train.run(alone, str(tmp_path / 'seed1'))
  expected, got = _leaves(single['eval']), _leaves(summary['per_seed'][1]['eval'])
  assert set(expected) == set(got) and expected
  for path, leaf in expected.items():
    np.testing.assert_allclose(got[path]['mean'], leaf['mean'], rtol=1e-5, err_msg=str(path))
  assert summary['per_seed'][1]['sparsity']['realised_sparsity'] == pytest.approx(
      single['sparsity']['realised_sparsity'], abs=1e-6)
  del config


def test_eval_is_the_across_seed_mean_with_a_t_interval(stacked_run):
  _, _, summary = stacked_run
  per_seed = [_leaves(s['eval']) for s in summary['per_seed']]
  for path, leaf in _leaves(summary['eval']).items():
    means = [p[path]['mean'] for p in per_seed]
    assert leaf['per_seed_mean'] == means and leaf['num_seeds'] == 2
    assert leaf['mean'] == pytest.approx(np.mean(means))
    # Two seeds: t(0.975, 1) = 12.7062 times std / sqrt(2) = |a - b| / 2.
    assert leaf['ci95'] == pytest.approx(12.7062047 * abs(means[0] - means[1]) / 2, rel=1e-6)
  assert 't-interval' in summary['ci']
  assert summary['timings']['seed_steps_per_sec'] == pytest.approx(2 * summary['timings']['steps_per_sec'])


def test_metrics_log_each_seed_and_their_mean(stacked_run):
  _, workdir, _ = stacked_run
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  last = records[-1]
  seed_losses = [last['outer/query_loss/seed_0'], last['outer/query_loss/seed_1']]
  assert seed_losses[0] != seed_losses[1]
  assert last['outer/query_loss'] == pytest.approx(np.mean(seed_losses))


def test_a_finished_stacked_run_restores_its_checkpoint_and_reports_the_same(stacked_run):
  config, workdir, summary = stacked_run
  again = train.run(config, workdir)  # Restores the stacked checkpoint; nothing left to train.
  assert again['timings']['start_step'] == config.outer.num_outer_steps
  assert again['eval'] == summary['eval']


def test_a_stacked_run_cannot_be_loaded_as_one_model(stacked_run):
  _, workdir, _ = stacked_run
  with open(os.path.join(workdir, 'model_spec.json')) as f:
    assert 'num_seeds' in json.load(f)['unavailable']
  with pytest.raises(ValueError, match='num_seeds=1'):
    build.load(workdir)


@pytest.mark.parametrize('num_seeds, num_devices, match', [(0, 1, 'must be an integer >= 1'),
                                                           (2, 0, 'num_devices=1')])
def test_bad_num_seeds_names_the_flag(num_seeds, num_devices, match):
  config = smoke.get_config()
  config.num_seeds, config.run.num_devices = num_seeds, num_devices
  with pytest.raises(ValueError, match=f'num_seeds={num_seeds}.*{match}'):
    build.build(config)


def test_t_interval_matches_the_closed_form():
  assert seeds.t_interval_95([1.0, 2.0, 3.0]) == pytest.approx(4.3026527 / math.sqrt(3), rel=1e-6)
  assert math.isnan(seeds.t_interval_95([1.0]))
  assert seeds.seed_list(smoke.get_config()) == [0]
