"""The absl launcher as a user runs it: flags, overrides, clear one-line errors."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, 'experiments', 'configs')


def _launch(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.maml_prune', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def _assert_short_error(result, *needles):
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
  assert result.stderr.startswith('error: '), result.stderr[-2000:]
  assert len(result.stderr.strip().splitlines()) <= 3, result.stderr
  for needle in needles:
    assert needle in result.stderr, result.stderr


def test_launcher_runs_a_tiny_config_with_overrides(tmp_path):
  result = _launch(f'--config={CONFIGS}/smoke.py', f'--workdir={tmp_path}', '--seed=3',
                   '--config.outer.num_outer_steps=20', '--config.sparsity.target_sparsity=0.5')
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  config = json.loads((tmp_path / 'config.json').read_text())
  assert summary['seed'] == 3 and summary['num_outer_steps'] == 20
  assert config['sparsity']['target_sparsity'] == 0.5 and config['task']['name'] == 'sinusoid'
  assert 'steps/s' in result.stderr and 'ETA' in result.stderr


def test_unknown_task_names_the_flag():
  _assert_short_error(_launch('--task=imagenet'), "--task='imagenet' is unknown", 'sinusoid')


@pytest.mark.parametrize('override,suggestion', [
    ('--config.target_sparsty=0.5', '--config.sparsity.target_sparsity'),    # A typo in a flat name.
    ('--config.sparsity.target_sparsty=0.5', '--config.sparsity.target_sparsity'),
    ('--config.eval_num_tasks=10', '--config.eval.num_tasks'),                # A name from before the sections.
    ('--config.mask=none', '--config.gates.mask'),
])
def test_unknown_field_is_one_line_naming_the_closest_field(override, suggestion):
  _assert_short_error(_launch('--task=sinusoid', override), 'is not a config field', suggestion)


def test_unknown_field_is_checked_against_the_config_file():
  # omniglot has task.ways; sinusoid (the default task) does not.
  result = _launch(f'--config={CONFIGS}/omniglot_tiny.py', '--config.task.waysss=3')
  _assert_short_error(result, '--config.task.ways')
  _assert_short_error(_launch('--task=sinusoid', '--config.task.ways=3'), '--config.task.ways')


def test_task_disagreeing_with_the_config_file_is_an_error():
  result = _launch('--task=sinusoid', f'--config={CONFIGS}/omniglot_tiny.py')
  _assert_short_error(result, '--task=sinusoid', "'omniglot'")


def test_bad_values_are_one_line_naming_the_flag(tmp_path):
  for override, flag in (('--config.sparsity.target_sparsity=1.2', '--config.sparsity.target_sparsity'),
                         ('--config.outer.num_outer_steps=0', '--config.outer.num_outer_steps')):
    result = _launch(f'--workdir={tmp_path}', override)
    _assert_short_error(result, flag)
    assert 'USAGE' not in result.stderr and '--helpfull' not in result.stderr
