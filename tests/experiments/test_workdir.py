"""Fault injection on a workdir: resume with another config, two launchers, torn metrics and summaries,
a diverging run past its skip limits (a count and a fraction), a read-only run folder; each asserts that nothing
already written is lost. Failing writes, damaged checkpoints and data through the launcher: test_launcher_faults.py."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import build
from experiments import monitor
from experiments import sweep
from experiments import train
from experiments import workdir as workdir_lib
from experiments.configs import smoke
from metaprune_jax import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, 'experiments', 'configs', 'smoke.py')
# The tiny config of every test here, as config fields and as launcher flags.
TINY = {'outer.num_outer_steps': 10, 'eval.num_tasks': 4, 'eval.steps': (1,), 'run.tensorboard': False,
        'run.log_every_steps': 5, 'run.checkpoint_every_steps': 5}


def _config(**changes):
  config = smoke.get_config()
  for path, value in {**TINY, **changes}.items():
    section, field = path.split('.')
    config[section][field] = value
  return config


def _flags():
  return [f'--config={SMOKE}', *(f'--config.{p}={v if not isinstance(v, tuple) else "(1,)"}' for p, v in TINY.items())]


def _launch(workdir, *extra, wait=True):
  command = [sys.executable, '-m', 'experiments.maml_prune', *_flags(), f'--workdir={workdir}', *extra]
  proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT}, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  return proc.communicate(timeout=300) + (proc.returncode,) if wait else proc


def _steps(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line)['step'] for line in f]


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A finished seed-0 run of the tiny config (checkpoints at 5 and 10)."""
  workdir = str(tmp_path_factory.mktemp('finished'))
  train.run(_config(), workdir)
  return workdir


def _snapshot(workdir):
  names = ('config.json', 'metrics.jsonl', 'summary.json')
  return {n: open(os.path.join(workdir, n), 'rb').read() for n in names}, checkpoint.list_checkpoints(workdir)


def test_launcher_with_another_seed_is_refused_naming_it_and_changes_nothing(finished):
  before = _snapshot(finished)
  stdout, stderr, code = _launch(finished, '--seed=1')
  assert code == 2, stderr[-2000:]
  error = stderr.strip().splitlines()[-1]  # After the config the launcher logs.
  assert error.startswith('error: ') and 'Traceback' not in stderr and stderr.count('error: ') == 1, stderr
  assert 'seed: 0 -> 1' in stderr and "allow_changes=\"('seed',)\"" in stderr and 'Delete' not in stderr, stderr
  assert _snapshot(finished) == before  # config.json byte-identical, the checkpoints untouched.


def test_every_changed_field_is_named_and_nothing_written(finished):
  before = _snapshot(finished)
  config = _config(**{'model.hidden_sizes': (4,), 'task.amplitude_range': (0.5, 2.0)})
  config.run.log_every_steps = 2  # Always allowed: not named.
  with pytest.raises(workdir_lib.ResumeMismatchError) as error:
    train.run(config, finished)
  message = str(error.value)
  assert 'model.hidden_sizes: [8, 8] -> [4]' in message and 'task.amplitude_range' in message
  assert 'log_every_steps' not in message and 'Delete' not in message
  assert _snapshot(finished) == before


def test_a_field_added_since_the_run_resumes_at_its_default_and_is_named_when_changed(finished):
  stored = json.loads(open(os.path.join(finished, 'config.json')).read())
  del stored['run']['max_skipped_fraction'], stored['eval']['divergence_ratio']  # Saved before they existed.
  text = json.dumps(stored)
  assert workdir_lib.config_changes(text, _config()) == {}
  changed = _config()
  changed.eval.divergence_ratio = 3.0
  assert workdir_lib.config_changes(text, changed) == {'eval.divergence_ratio': (10.0, 3.0)}


def test_allowed_change_extends_a_run_and_timings_cover_both_segments(finished, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished, workdir)  # The same finished run as train.run(_config(), workdir), without rerunning it.
  longer = _config(**{'outer.num_outer_steps': 20})
  with pytest.raises(workdir_lib.ResumeMismatchError, match=r'outer.num_outer_steps: 10 -> 20'):
    train.run(longer, workdir)
  longer.run.allow_changes = ('outer.num_outer_steps',)
  summary = train.run(longer, workdir)
  assert _steps(workdir) == [5, 10, 15, 20] and summary['num_outer_steps'] == 20
  timings = summary['timings']
  assert timings['start_step'] == 10 and timings['segments'] == 2
  with open(os.path.join(workdir, 'checkpoints', '10', 'host', 'metadata')) as f:
    first_segment = json.load(f)  # What the first segment had timed when it saved step 10.
  assert timings['train_seconds'] > first_segment['train_seconds'] > 0
  assert timings['timed_steps'] > first_segment['timed_steps'] and timings['timed_steps'] > 10
  assert json.loads(open(os.path.join(workdir, 'config.json')).read())['outer']['num_outer_steps'] == 20
  shorter = _config()  # Checkpointed at 20: refusing beats reporting 10 steps.
  shorter.run.allow_changes = ('outer.num_outer_steps',)
  with pytest.raises(workdir_lib.ResumeMismatchError, match='checkpoint at step 20, past .*num_outer_steps=10'):
    train.run(shorter, workdir)


def test_second_launcher_fails_at_once_naming_the_first_which_finishes_complete(tmp_path):
  first = _launch(tmp_path, '--config.outer.num_outer_steps=40', wait=False)
  lock = tmp_path / '.lock'
  deadline = time.time() + 120
  while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
    time.sleep(0.05)
  t0 = time.time()
  _, stderr, code = _launch(tmp_path, '--config.outer.num_outer_steps=40')
  elapsed = time.time() - t0
  _, first_err, first_code = first.communicate(timeout=300) + (first.wait(),)
  assert code == 2 and f'is in use by process {first.pid} on ' in stderr and 'Traceback' not in stderr, stderr
  assert elapsed < 30, elapsed
  assert first_code == 0, first_err[-2000:]
  assert _steps(tmp_path) == [5, 10, 15, 20, 25, 30, 35, 40]  # As many lines as an uninterrupted run.


def test_lock_of_a_killed_process_is_recovered(tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', 'import sys, time\nfrom experiments import workdir\n'
                             'with workdir.lock(sys.argv[1]):\n  print("held", flush=True)\n  time.sleep(600)',
                             str(tmp_path)], cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT},
                            stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == 'held'
  with pytest.raises(workdir_lib.WorkdirInUseError, match=f'in use by process {holder.pid} on '):
    with workdir_lib.lock(str(tmp_path)):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait(timeout=30)
  with workdir_lib.lock(str(tmp_path)):  # The kernel released the dead process's lock.
    assert (tmp_path / '.lock').read_text().split()[0] == str(os.getpid())


def test_torn_last_metrics_line_is_dropped_with_a_warning(finished, tmp_path, monkeypatch, caplog):
  workdir = str(tmp_path)
  real_save = checkpoint.save

  def save_then_die(state, folder, **kwargs):
    path = real_save(state, folder, **kwargs)
    if int(state.step) == 5:
      raise KeyboardInterrupt('simulated kill after the step-5 checkpoint')
    return path
  monkeypatch.setattr(checkpoint, 'save', save_then_die)
  with pytest.raises(KeyboardInterrupt):
    train.run(_config(), workdir)
  monkeypatch.setattr(checkpoint, 'save', real_save)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 10, "outer/obj')  # A write cut short by a full disk.
  with caplog.at_level(logging.WARNING):
    summary = train.run(_config(), workdir)
  assert 'dropped 1 unreadable line(s) (line 2' in caplog.text
  assert _steps(workdir) == _steps(finished) == [5, 10]
  full = json.loads(open(os.path.join(finished, 'summary.json')).read())
  assert summary['eval'] == full['eval']


def test_truncated_summary_is_rerun_by_the_sweep_and_not_aggregated(tmp_path, monkeypatch):
  spec = {'parameters': {'sparsity.target_sparsity': [0.5, 0.8]}, 'config': SMOKE}
  runs = sweep.expand(spec)
  for run, text in zip(runs, ('{"eval": {"m": 0.5}, "sparsity": {"realised_sparsity": 0.5, "nonzero_params": 1}, '
                               '"timings": {}}', '{"eval": {"sparse": {"sh')):
    os.makedirs(sweep.run_dir(str(tmp_path), run))
    (tmp_path / 'runs' / run['name'] / 'summary.json').write_text(text)
  assert [sweep.is_complete(str(tmp_path), r) for r in runs] == [True, False]
  started = []

  class Done:
    returncode = 0

    def __init__(self, command, **kwargs):
      started.append(command)

    def poll(self):
      return 0
  monkeypatch.setattr(sweep.subprocess, 'Popen', Done)
  assert sweep.execute('sinusoid', spec, str(tmp_path)) == {runs[1]['name']: 0}
  assert len(started) == 1 and f'--workdir={sweep.run_dir(str(tmp_path), runs[1])}' in started[0]
  rows = sweep.aggregate({**spec, 'metric': 'eval.m'}, str(tmp_path))  # No crash on the truncated one.
  assert [r['status'] for r in rows] == ['done', 'missing']


def test_skip_limit_stops_a_diverging_run_naming_the_last_checkpoint(tmp_path):
  config = _config(**{'outer.outer_lr': 1e30, 'run.nonfinite': 'skip', 'run.max_skipped_steps': 5})
  with pytest.raises(FloatingPointError, match=r'non-finite updates skipped .*max_skipped_steps=5.*'
                                               f'last good checkpoint is {tmp_path}/checkpoints/5 '):
    train.run(config, str(tmp_path))
  assert not (tmp_path / 'summary.json').exists()  # Not "finished" for a sweep.
  assert [s for s, _ in checkpoint.list_checkpoints(str(tmp_path))] == [5]


def test_skip_fraction_stops_a_run_skipping_most_of_its_updates(tmp_path):
  config = _config(**{'outer.num_outer_steps': 30, 'outer.outer_lr': 1e30, 'run.nonfinite': 'skip',
                      'run.max_skipped_steps': 1000, 'run.max_skipped_fraction': 0.5})
  with pytest.raises(FloatingPointError, match=r'non-finite updates skipped by meta-step 20, \d+% of the 20 so far, '
                                               r'more than --config.run.max_skipped_fraction=0.5.*'
                                               f'last good checkpoint is {tmp_path}/checkpoints/15 '):
    train.run(config, str(tmp_path))
  assert not (tmp_path / 'summary.json').exists()  # Not "finished" for a sweep.
  assert [s for s, _ in checkpoint.list_checkpoints(str(tmp_path))] == [5, 10, 15]


def test_skip_fraction_counts_from_step_20_and_stops_past_the_fraction():
  guard = monitor.NonfiniteGuard('skip', max_skipped=100, max_skipped_fraction=0.5)

  def check(first, flags):
    for i, flag in enumerate(flags):
      guard.record(first + i, {'outer/nonfinite': np.float32(flag)})
    guard.check('W/checkpoints/5')
  check(1, [1] * 5)  # 5 of 5 skipped: an early burst before step 20 does not stop the run ...
  check(6, [0] * 15)  # ... 5 of 20.
  check(21, [1] * 10)  # 15 of 30: not past half of the steps so far.
  with pytest.raises(FloatingPointError, match=r'16 non-finite updates skipped by meta-step 31, 52% of the 31 .*'
                                               r'max_skipped_fraction=0.5: .*last good checkpoint is W/checkpoints/5'):
    check(31, [1])
  assert guard.skipped_steps == 16


@pytest.mark.parametrize('value', [-0.1, 1.5, float('nan')])
def test_skip_fraction_outside_0_1_is_refused_naming_the_flag(value):
  with pytest.raises(ValueError, match=r'--config.run.max_skipped_fraction.*in \[0, 1\]'):
    build.check(_config(**{'run.max_skipped_fraction': value}))


def test_evaluate_decides_its_output_before_the_work(tmp_path, monkeypatch):
  run = str(tmp_path / 'run')
  os.makedirs(run)
  assert workdir_lib.output_path(run, None, 'episodes_eval.json') == os.path.join(run, 'episodes_eval.json')
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(workdir_lib.os, 'access', lambda path, mode: path != run)  # A read-only run folder.
  assert workdir_lib.output_path(run, None, 'episodes_eval.json') == str(tmp_path / 'episodes_eval.json')
  with pytest.raises(PermissionError, match='--output=.*missing or not writable'):
    workdir_lib.output_path(run, str(tmp_path / 'missing' / 'out.json'), 'episodes_eval.json')
