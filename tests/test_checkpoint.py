"""Orbax checkpoints: SIGKILL mid-run and mid-save resume from the last complete one; damage is refused loudly."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import pytest

from metaprune_jax import checkpoint
from experiments import build
from experiments import train
from experiments.configs import smoke
from tests import test_utils

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A run of the smoke config with a checkpoint every 10 steps; with KILL_AT set it
# SIGKILLs itself inside orbax's final rename of that step's checkpoint (files written, not committed).
_CHILD = r'''
import os, signal, sys
from orbax.checkpoint._src.path import atomicity
from experiments import train
from experiments.configs import smoke
kill_at = os.environ.get('KILL_AT')
real_finalize = atomicity.AtomicRenameTemporaryPath.finalize
async def finalize_or_die(self):
  if kill_at and self._final_path.name == kill_at:
    os.kill(os.getpid(), signal.SIGKILL)
  return await real_finalize(self)
atomicity.AtomicRenameTemporaryPath.finalize = finalize_or_die
config = smoke.get_config()
config.run.checkpoint_every_steps = 10
config.outer.num_outer_steps = int(os.environ.get('NUM_STEPS', 30))
train.run(config, sys.argv[1])
'''


def _child(workdir, **env):
  return subprocess.Popen([sys.executable, '-c', _CHILD, str(workdir)], cwd=ROOT,
                          env={**os.environ, 'PYTHONPATH': ROOT, **env},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items() if k != 'steps_per_sec'} for line in f]


def _config():
  config = smoke.get_config()
  config.run.checkpoint_every_steps = 10
  return config


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('full')
  summary = train.run(_config(), str(workdir))
  return summary, _records(workdir)


def test_sigkill_during_a_save_resumes_from_the_last_complete_checkpoint(tmp_path, uninterrupted):
  proc = _child(tmp_path, KILL_AT='20')
  _, stderr = proc.communicate(timeout=300)
  test_utils.assert_equal(proc.returncode, -signal.SIGKILL, err_msg=stderr[-2000:])
  leftovers = [n for n in os.listdir(tmp_path / 'checkpoints') if n not in ('10',)]
  assert leftovers and all('tmp' in n for n in leftovers), leftovers  # The half-written step-20 save.
  test_utils.assert_equal([s for s, _ in checkpoint.list_checkpoints(str(tmp_path))], [10])
  resumed = train.run(_config(), str(tmp_path))
  test_utils.assert_equal(resumed['timings']['start_step'], 10)
  full, full_records = uninterrupted
  assert _records(tmp_path) == full_records
  assert resumed['eval'] == full['eval']
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['10', '20', '30']  # Partial save cleaned up.


def test_sigkill_from_outside_after_the_first_checkpoint(tmp_path, uninterrupted):
  proc = _child(tmp_path, NUM_STEPS='30')
  deadline = time.time() + 240
  while not checkpoint.list_checkpoints(str(tmp_path)) and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  done = checkpoint.list_checkpoints(str(tmp_path))
  assert done, 'the child never wrote a checkpoint'
  resumed = train.run(_config(), str(tmp_path))
  test_utils.assert_equal(resumed['timings']['start_step'], done[-1][0])
  full, full_records = uninterrupted
  assert _records(tmp_path) == full_records
  assert resumed['eval'] == full['eval']


def _trained(tmp_path):
  config = smoke.get_config()
  config.outer.num_outer_steps = 10
  train.run(config, str(tmp_path))
  return config, checkpoint.list_checkpoints(str(tmp_path))[-1][1]


def test_garbage_checkpoint_names_the_directory_and_the_fix(tmp_path):
  config, path = _trained(tmp_path)
  for folder, _, files in os.walk(os.path.join(path, 'state')):
    for name in files:
      with open(os.path.join(folder, name), 'wb') as f:
        f.write(b'\x00garbage')
  with pytest.raises(ValueError, match=f'{path} is corrupt or unreadable.*--workdir'):
    train.run(config, str(tmp_path))


def test_checkpoint_missing_its_arrays_is_refused(tmp_path):
  config, path = _trained(tmp_path)
  shutil.rmtree(os.path.join(path, 'state', 'd'))
  with pytest.raises(ValueError, match=f'{path} is corrupt or unreadable'):
    train.run(config, str(tmp_path))


def test_incompatible_checkpoint_is_refused(tmp_path):
  config, path = _trained(tmp_path)
  config.model.hidden_sizes = (4,)
  with pytest.raises(ValueError, match=r'model.hidden_sizes: \[8, 8\] -> \[4\]'):  # The config check names it ...
    train.run(config, str(tmp_path))
  config.run.allow_changes = ('model.hidden_sizes',)  # ... and past it, the checkpoint's own shape check.
  with pytest.raises(ValueError, match=f'{path} does not match this config.*intact'):
    train.run(config, str(tmp_path))
  config.model.hidden_sizes = (8, 16)
  with pytest.raises(ValueError, match=r'shape \(8, 8\) where \(8, 16\) is expected'):
    train.run(config, str(tmp_path))


def test_restore_round_trips_every_leaf_and_the_typed_key(tmp_path):
  config = smoke.get_config()
  state = build.build(config).init_state()
  checkpoint.save(state, str(tmp_path), host={'skipped_steps': 2})
  restored, host = checkpoint.restore_latest_with_host(state, str(tmp_path))
  test_utils.assert_trees_all_equal(restored._replace(key=None), state._replace(key=None))
  test_utils.assert_equal(jax.random.key_data(restored.key), jax.random.key_data(state.key))
  assert host == {'skipped_steps': 2}


def test_load_run_reads_the_config_and_meta_params_of_a_finished_run(tmp_path):
  config, path = _trained(tmp_path)
  run = checkpoint.load_run(str(tmp_path))
  assert run.step == 10 == run.config.outer.num_outer_steps
  assert run.config.task.name == 'sinusoid' and tuple(run.config.model.hidden_sizes) == (8, 8)
  build.check(run.config)  # config.json is a valid config (lists for tuples pass).
  exp = build.build(config)
  restored = checkpoint.restore_latest(exp.init_state(), str(tmp_path))
  test_utils.assert_trees_all_equal(run.meta_params, restored.meta_params)
  assert run.meta_params['gate_logits'] is not None
  test_utils.assert_close(run.multiplier, float(restored.multiplier))
  with pytest.raises(FileNotFoundError, match=r'no checkpoint at step 7; it has steps \[10\]'):
    checkpoint.load_run(str(tmp_path), step=7)
  del path


def test_load_run_of_a_dense_run_has_no_gate_logits(tmp_path):
  config = smoke.get_config()
  config.outer.num_outer_steps = 5
  config.gates.mask = 'none'
  train.run(config, str(tmp_path))
  run = checkpoint.load_run(str(tmp_path))
  assert run.meta_params['gate_logits'] is None and run.step == 5
  assert run.config.gates.mask == 'none'
  assert set(run.meta_params['params']) == {'Dense_0', 'Dense_1', 'Dense_2'}


def test_load_run_of_a_missing_or_untrained_folder_names_it(tmp_path):
  missing = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match=f"'{missing}' has no config.json"):
    checkpoint.load_run(missing)
  (tmp_path / 'config.json').write_text(smoke.get_config().to_json_best_effort())
  with pytest.raises(FileNotFoundError, match=f"'{tmp_path}' has no checkpoint"):
    checkpoint.load_run(str(tmp_path))


def test_quiet_orbax_logs_drops_only_orbax_info_records():
  import logging  # pylint: disable=g-import-not-at-top
  checkpoint.quiet_orbax_logs()
  checkpoint.quiet_orbax_logs()  # Idempotent: one filter.
  logger = logging.getLogger('absl')
  assert sum(isinstance(f, checkpoint._OrbaxInfoFilter) for f in logger.filters) == 1  # pylint: disable=protected-access
  def record(level, path):
    return logging.LogRecord('absl', level, path, 1, 'message', None, None)
  orbax_file = os.path.join(os.sep, 'site-packages', 'orbax', 'checkpoint', 'checkpoint_manager.py')
  assert not logger.filter(record(logging.INFO, orbax_file))
  assert logger.filter(record(logging.WARNING, orbax_file))
  assert logger.filter(record(logging.INFO, os.path.join(os.sep, 'repo', 'experiments', 'train.py')))
