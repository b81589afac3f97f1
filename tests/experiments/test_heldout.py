"""``experiments.heldout``: validation and test re-evaluation of a trained run, and the test ledger."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from experiments import config_check
from experiments import heldout
from tests.experiments.test_maml_prune import ROOT


@pytest.fixture
def run(tiny_protonet_run, tmp_path):
  """A private copy of the shared tiny run (the ledger and results are written into it)."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_protonet_run, workdir)
  return workdir


def _summary(workdir):
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)


def test_test_split_reproduces_the_runs_own_test_evaluation(run):
  record = heldout.evaluate_run(run, split='test')
  assert _summary(run)['eval'] == json.loads(json.dumps(record['eval']))  # Same episodes, same numbers.
  assert record['test_evaluation'] == 1 and record['evaluation']['eval.split'] == 'test'
  ledger = heldout.read_ledger(run)
  assert len(ledger) == 1 and ledger[0]['repeat'] == 0 and ledger[0]['overrides'] == {}
  on_disk = json.loads((open(os.path.join(run, ledger[0]['result'])).read()))
  assert on_disk['eval'] == json.loads(json.dumps(record['eval']))


def test_validation_reads_other_episodes_and_leaves_no_ledger(run):
  record = heldout.evaluate_run(run, split='validation')
  assert record['split'] == 'validation' and 'test_evaluation' not in record
  assert record['eval'] != _summary(run)['eval']
  assert heldout.read_ledger(run) == []
  assert os.path.exists(os.path.join(run, heldout.RESULTS_FOLDER, 'validation.json'))


def test_a_second_test_evaluation_is_refused_unless_asked_and_then_recorded(run):
  first = heldout.evaluate_run(run, split='test')
  with pytest.raises(heldout.RepeatedTestError, match='--again'):
    heldout.evaluate_run(run, split='test')
  second = heldout.evaluate_run(run, split='test', again=True)
  assert second['test_evaluation'] == 2 and second['eval'] == first['eval']
  assert [e['repeat'] for e in heldout.read_ledger(run)] == [0, 1]
  other = heldout.evaluate_run(run, split='test', overrides={'eval.num_tasks': 2})  # Other settings: a first.
  assert other['test_evaluation'] == 1 and other['eval_num_tasks'] == 2
  assert os.path.exists(os.path.join(run, heldout.RESULTS_FOLDER, 'test__eval.num_tasks=2.json'))


def test_overrides_that_change_the_model_or_name_no_field_are_refused(run):
  with pytest.raises(ValueError, match='would change the trained model'):
    heldout.evaluate_run(run, split='test', overrides={'outer.outer_lr': 0.1})
  with pytest.raises(config_check.ConfigError, match='did you mean --config.eval.num_tasks'):
    heldout.evaluate_run(run, split='test', overrides={'eval.num_taks': 2})
  with pytest.raises(config_check.ConfigError, match='expected a int'):
    heldout.evaluate_run(run, split='test', overrides={'eval.num_tasks': 'many'})
  with pytest.raises(ValueError, match="--split='train' is invalid"):
    heldout.evaluate_run(run, split='train')
  assert heldout.read_ledger(run) == []


def test_launcher_evaluates_the_split_and_refuses_a_repeat(run):
  command = [sys.executable, '-m', 'experiments.evaluate', f'--workdir={run}', '--split=test',
             '--override=eval.num_tasks=3']
  first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'test sparse/accuracy ways_3_shots_1 step_0:' in first.stdout and '(95% CI, 3 tasks)' in first.stdout
  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith('error: --workdir=')
  assert 'already evaluated' in again.stderr and '--again' in again.stderr
  both = subprocess.run(command[:5] + ['--episodes=/nowhere'], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert both.returncode == 2 and 'exactly one of --split' in both.stderr
