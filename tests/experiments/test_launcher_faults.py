"""Faults through the launcher as a user meets them: a write that fails (a file-size limit, as on a full disk), a
damaged checkpoint, a truncated strokes zip, an oversized Omniglot image, ``distributed=True`` on one host.

Each is one ``error:`` line, the last line printed, naming what failed and the fix, with no traceback; nothing
already written is lost.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from experiments import build
from experiments import train
from experiments.configs import smoke
from metaprune_jax import checkpoint
from tests import test_utils
from tests.data import damaged
from tests.data import omniglot_subset
from tests.shared_data import OMNIGLOT_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, 'experiments', 'configs')
# The run every workdir fault starts from: 20 steps, killed after its checkpoint at step 10.
RUN = {'outer.num_outer_steps': 20, 'eval.num_tasks': 4, 'eval.steps': (1,), 'run.tensorboard': False,
       'run.log_every_steps': 5, 'run.checkpoint_every_steps': 5}


def _config():
  config = smoke.get_config()
  for path, value in RUN.items():
    section, field = path.split('.')
    config[section][field] = value
  return config


def _flags():
  return [f'--config={CONFIGS}/smoke.py', *(f'--config.{p}={v if not isinstance(v, tuple) else "(1,)"}'
                                           for p, v in RUN.items())]


# Runs argv[2:] with writes past argv[1] bytes failing with EFBIG, as on a full disk: RLIMIT_FSIZE with SIGXFSZ
# ignored, both kept across exec (a preexec_fn would fork this multithreaded JAX process and run Python there).
_LIMITED = ('import os, resource, signal, sys\n'
            'signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n'
            'resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2)\n'
            'os.execv(sys.executable, [sys.executable, *sys.argv[2:]])')


def _launch(*args, file_size_limit=None):
  command = [sys.executable, '-m', 'experiments.maml_prune', *args]
  if file_size_limit is not None:
    command = [sys.executable, '-c', _LIMITED, str(file_size_limit), *command[1:]]
  # Reads the test compilation cache but writes no entry (a write past a file-size limit would leave half of one).
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': str(1 << 62)}
  return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _assert_one_error_line_last(result, status, *needles):
  """The ``error:`` line is the last line printed, the only one, with no traceback and no orbax noise."""
  lines = result.stderr.strip().splitlines()
  assert result.returncode == status, result.stderr[-3000:]
  assert lines and lines[-1].startswith('error: '), result.stderr[-3000:]
  assert result.stderr.count('error: ') == 1 and not result.stdout.strip(), result.stderr[-3000:]
  for noise in ('Traceback', 'Event loop is closed', 'never awaited', 'tensorstore_spec', 'USAGE'):
    assert noise not in result.stderr, result.stderr[-3000:]
  for needle in needles:
    assert needle in lines[-1], lines[-1]
  return lines[-1]


@pytest.fixture(scope='module')
def killed(tmp_path_factory):
  """A workdir of ``RUN`` killed just after its step-10 checkpoint (checkpoints 5 and 10, metrics 5 and 10)."""
  workdir = str(tmp_path_factory.mktemp('killed'))
  real_save = checkpoint.save

  def save_then_die(state, folder, **kwargs):
    path = real_save(state, folder, **kwargs)
    if int(state.step) == 10:
      raise KeyboardInterrupt('simulated kill after the step-10 checkpoint')
    return path
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(checkpoint, 'save', save_then_die)
    with pytest.raises(KeyboardInterrupt):
      train.run(_config(), workdir)
  return workdir


def _read(folder, *names):
  """``{name: bytes}`` of ``names`` in ``folder``, or of every file under it."""
  paths = [os.path.join(folder, n) for n in names] or [os.path.join(root, n) for root, _, ns in os.walk(folder)
                                                       for n in ns]
  return {os.path.relpath(p, folder): pathlib.Path(p).read_bytes() for p in paths}


@pytest.mark.parametrize('limit,what', [
    (2_000, 'writing {w}/config.json failed (File too large)'),  # Before training: config.json is 3.0 KB.
    # Above config.json, below the checkpoint's files: tensorstore's array write fails: its ValueError, and ~25
    # 'Event loop is closed' tracebacks filtered.
    (3_300, 'writing checkpoint {w}/checkpoints/15 failed (ValueError: OUT_OF_RANGE: Error writing local file'),
    (10_000, 'writing checkpoint {w}/checkpoints/15 failed (OSError: [Errno 27] File too large)'),  # _METADATA.
])
def test_a_failing_write_is_one_line_naming_it_and_loses_nothing(killed, tmp_path, limit, what):
  workdir = str(tmp_path / 'run')
  shutil.copytree(killed, workdir)
  before = _read(workdir, 'config.json', 'metrics.jsonl')
  checkpoint_before = _read(os.path.join(workdir, 'checkpoints', '10'))
  result = _launch(*_flags(), f'--workdir={workdir}', file_size_limit=limit)
  _assert_one_error_line_last(result, 1, what.format(w=workdir), 'Nothing already written was lost',
                              'intact (newest: step 10)', 'ulimit -f', 'rerun the same command')
  after = _read(workdir, 'config.json', 'metrics.jsonl')
  assert after['config.json'] == before['config.json']
  assert after['metrics.jsonl'].startswith(before['metrics.jsonl'])  # Step 15's line may follow, whole.
  assert [json.loads(line)['step'] for line in after['metrics.jsonl'].splitlines()][:2] == [5, 10]
  assert [s for s, _ in checkpoint.list_checkpoints(workdir)] == [5, 10]
  assert _read(os.path.join(workdir, 'checkpoints', '10')) == checkpoint_before
  template = build.build(_config()).init_state()
  state, host = checkpoint.restore(template, workdir, 10)
  expected, _ = checkpoint.restore(template, killed, 10)
  assert int(state.step) == 10 and host['segments'] == 1
  test_utils.assert_trees_all_equal(state.meta_params, expected.meta_params)


def test_a_damaged_checkpoint_is_one_short_line_without_orbax_noise(killed, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(killed, workdir)
  data = os.path.join(workdir, 'checkpoints', '10', 'state', 'd')
  for name in os.listdir(data):  # Every array chunk cut in half.
    damaged.truncate_half(os.path.join(data, name))
  before = _read(workdir, 'config.json', 'metrics.jsonl')
  result = _launch(*_flags(), f'--workdir={workdir}')
  error = _assert_one_error_line_last(result, 2, f'Checkpoint {workdir}/checkpoints/10 is corrupt or unreadable',
                                      f'Delete {workdir}/checkpoints/10 to resume from an earlier checkpoint')
  assert len(error) < 800 and len(result.stderr.strip().splitlines()) <= 3, result.stderr
  assert _read(workdir, 'config.json', 'metrics.jsonl') == before


def test_a_truncated_strokes_zip_is_named(tmp_path):
  data_dir = tmp_path / 'strokes'
  data_dir.mkdir()
  for name in ('strokes_background_small1.zip', 'strokes_background_small2.zip'):
    source = os.path.join(OMNIGLOT_DIR, name)
    if not os.path.exists(source):
      pytest.skip(f'{source} is missing')
    shutil.copyfile(source, data_dir / name)
  truncated = data_dir / 'strokes_background_small1.zip'  # Decoded first.
  damaged.truncate_half(truncated)
  result = _launch('--task=strokes', f'--config.task.data_dir={data_dir}', '--config.task.cache_dir=',
                   f'--workdir={tmp_path / "run"}')
  _assert_one_error_line_last(result, 2, f'strokes archive {truncated} ', 'truncated or corrupt',
                              'Download strokes_background_small1.zip again', '--config.task.data_dir')
  assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / 'run').exists()


@omniglot_subset.needs_data
def test_an_oversized_omniglot_image_is_named(tmp_path):
  zips = tmp_path / 'zips'
  zips.mkdir()
  omniglot_subset.write_subset(str(zips))
  data_dir = tmp_path / 'omniglot'
  shutil.unpack_archive(zips / 'images_background_small1.zip', data_dir)
  character = data_dir / 'images_background_small1' / 'Greek' / 'character01'
  image = character / sorted(os.listdir(character))[3]
  image.write_bytes(damaged.png_header(100_000, 100_000))  # 10^10 pixels: a decompression bomb.
  result = _launch(f'--config={CONFIGS}/omniglot_tiny.py', f'--config.task.data_dir={data_dir}',
                   f'--workdir={tmp_path / "run"}')
  _assert_one_error_line_last(result, 2, f'Cannot read Omniglot image {image} (far larger than an Omniglot image',
                              're-download or re-extract it')
  assert len(result.stderr.strip().splitlines()) == 1


def test_distributed_on_one_host_says_how_to_launch(tmp_path):
  result = _launch(f'--config={CONFIGS}/smoke.py', '--config.run.distributed=True', f'--workdir={tmp_path}')
  _assert_one_error_line_last(result, 2, '--config.run.distributed=True', 'found no cluster to join',
                              'one launcher per host', 'drop --config.run.distributed')
  assert len(result.stderr.strip().splitlines()) == 1


def test_a_user_mistake_found_after_the_start_is_the_last_line(killed, tmp_path):
  # A resume with another config is found once the problem is built; the config is logged only after the checks.
  workdir = str(tmp_path / 'run')
  shutil.copytree(killed, workdir)
  result = _launch(*_flags(), f'--workdir={workdir}', '--seed=1')
  _assert_one_error_line_last(result, 2, 'seed: 0 -> 1')
  assert 'Config (' not in result.stderr and len(result.stderr.strip().splitlines()) <= 2, result.stderr
