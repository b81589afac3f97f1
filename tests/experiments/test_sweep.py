"""Sweeps: 4 tiny runs, the sweep killed after the first and restarted, aggregate correctly."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from experiments import sweep
from tests import test_utils

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SPEC = f'''
def get_sweep():
  return {{'method': 'grid', 'parameters': {{'sparsity.target_sparsity': [0.5, 0.8]}}, 'seeds': [0, 1],
          'config': '{ROOT}/experiments/configs/smoke.py',
          'fixed': {{'outer.num_outer_steps': 10, 'eval.num_tasks': 8, 'eval.shots': (5,),
                    'run.tensorboard': False}},
          'metric': 'eval.sparse.shots_5.step_1.mean'}}
'''


def _sweep(spec_path, workdir, *extra):
  return subprocess.Popen([sys.executable, '-m', 'experiments.sweep', '--task=sinusoid', f'--sweep={spec_path}',
                           f'--workdir={workdir}', *extra], cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_interrupted_sweep_skips_done_runs_and_aggregates(tmp_path):
  spec_path = tmp_path / 'spec.py'
  spec_path.write_text(SPEC)
  workdir = tmp_path / 'sweep'
  runs = sweep.expand(sweep.load_spec(str(spec_path)))
  assert len(runs) == 4
  proc = _sweep(spec_path, workdir)
  first = workdir / 'runs' / runs[0]['name'] / 'summary.json'
  deadline = time.time() + 240
  while not first.exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.1)
  os.killpg(proc.pid, signal.SIGKILL)  # The sweep and the run it had started.
  proc.communicate(timeout=60)
  assert first.exists(), 'the first run never finished'
  first_mtime = first.stat().st_mtime_ns
  assert not all(sweep.is_complete(str(workdir), r) for r in runs)
  proc = _sweep(spec_path, workdir, '--parallel=2')
  _, stderr = proc.communicate(timeout=500)
  assert proc.returncode == 0, stderr[-3000:]
  assert first.stat().st_mtime_ns == first_mtime  # Skipped, not rerun.
  assert '3 runs to do (1 complete already)' in stderr
  with open(workdir / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['name'] for r in rows] == [r['name'] for r in runs]
  for row, run in zip(rows, runs):
    summary = json.loads((workdir / 'runs' / run['name'] / 'summary.json').read_text())
    assert row['status'] == 'done'
    test_utils.assert_equal(float(row['metric']), summary['eval']['sparse']['shots_5']['step_1']['mean'])
    test_utils.assert_equal(summary['seed'], run['seed'])
    test_utils.assert_equal(float(row['sparsity.target_sparsity']), run['overrides']['sparsity.target_sparsity'])
  table = (workdir / 'results.md').read_text()
  assert '| 0.5 | 2 |' in table and '| 0.8 | 2 |' in table
  assert (workdir / 'sweep.png').stat().st_size > 0


def test_random_search_is_reproducible_and_in_range():
  spec = {'method': 'random', 'num_samples': 5, 'seeds': [0],
          'parameters': {'outer.outer_lr': {'log_uniform': [1e-4, 1e-2]}, 'model.activation': ['relu', 'tanh']}}
  sweep.validate_spec(spec)
  sweep.check_fields('sinusoid', spec)
  runs = sweep.expand(spec)
  assert runs == sweep.expand(spec)
  assert all(1e-4 <= r['overrides']['outer.outer_lr'] <= 1e-2 for r in runs)
  assert {r['overrides']['model.activation'] for r in runs} <= {'relu', 'tanh'}
  command = sweep.run_command('sinusoid', spec, runs[0], '/tmp/run')
  assert any(arg.startswith('--config.outer.outer_lr=') for arg in command)


def test_yaml_spec_loads(tmp_path):
  path = tmp_path / 'spec.yaml'
  path.write_text('method: grid\nparameters:\n  sparsity.target_sparsity: [0.5, 0.9]\nseeds: [0, 1, 2]\n')
  test_utils.assert_equal(len(sweep.expand(sweep.load_spec(str(path)))), 6)


@pytest.mark.parametrize('spec,match', [({'method': 'bayes'}, "method='bayes'; use one of"),
                                        ({'seeds': []}, 'seeds'),
                                        ({'parameters': {'outer.outer_lr': {'uniform': [0, 1]}}},
                                         'need method random'),
                                        ({'paramters': {}}, 'expected a dict with keys')])
def test_bad_spec_names_the_problem(spec, match):
  with pytest.raises(ValueError, match=match):
    sweep.validate_spec(spec, 'spec.py')


def test_unknown_field_in_a_spec_is_one_line_naming_the_closest(tmp_path):
  spec_path = tmp_path / 'spec.yaml'
  spec_path.write_text('method: grid\nparameters:\n  target_sparsity: [0.5]\nfixed:\n  outer.num_outer_step: 10\n')
  with pytest.raises(ValueError, match='did you mean --config.sparsity.target_sparsity'):
    sweep.check_fields('sinusoid', sweep.load_spec(str(spec_path)))
  result = subprocess.run([sys.executable, '-m', 'experiments.sweep', '--task=sinusoid', f'--sweep={spec_path}',
                           f'--workdir={tmp_path}/sweep'], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-2000:]
  assert 'error: --config.target_sparsity is not a config field' in result.stderr, result.stderr


def test_a_run_stopped_early_is_skipped_on_restart_and_marked_in_the_results(tmp_path):
  spec = {'parameters': {'sparsity.target_sparsity': [0.5, 0.8, 0.9]}, 'metric': 'eval.m'}
  runs = sweep.expand(spec)
  for run in runs:
    os.makedirs(sweep.run_dir(str(tmp_path), run))
  (tmp_path / 'runs' / runs[0]['name'] / 'summary.json').write_text(json.dumps(
      {'eval': {'m': 0.5}, 'sparsity': {'realised_sparsity': 0.5, 'nonzero_params': 1}, 'timings': {}}))
  (tmp_path / 'runs' / runs[1]['name'] / sweep.EARLY_STOPPED).write_text(json.dumps({'step': 5}))
  assert sweep.pending_runs(spec, str(tmp_path)) == runs[2:]
  rows = sweep.aggregate(spec, str(tmp_path))
  assert [r['status'] for r in rows] == ['done', 'early_stopped', 'missing']
  assert '3 runs, 1 done, 1 stopped early by ASHA' in (tmp_path / 'results.md').read_text()
