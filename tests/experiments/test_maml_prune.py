"""The absl launcher as a user runs it: flags, overrides, clear errors."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _launch(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.maml_prune', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_launcher_runs_a_tiny_config_with_overrides(tmp_path):
  result = _launch(f'--config={ROOT}/experiments/configs/smoke.py', f'--workdir={tmp_path}', '--seed=3',
                   '--config.num_outer_steps=20', '--config.target_sparsity=0.5')
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  config = json.loads((tmp_path / 'config.json').read_text())
  assert summary['seed'] == 3 and config['target_sparsity'] == 0.5 and summary['num_outer_steps'] == 20
  assert 'steps/s' in result.stderr and 'ETA' in result.stderr


def test_unknown_task_names_the_flag():
  result = _launch('--task=imagenet')
  assert result.returncode != 0
  assert "--task='imagenet' is unknown" in result.stderr and 'sinusoid' in result.stderr


def test_bad_values_name_the_flag(tmp_path):
  for override, flag in (('--config.target_sparsity=1.2', '--config.target_sparsity'),
                         ('--config.num_outer_steps=0', '--config.num_outer_steps')):
    result = _launch(f'--workdir={tmp_path}', override)
    assert result.returncode != 0
    assert flag in result.stderr, result.stderr[-2000:]
