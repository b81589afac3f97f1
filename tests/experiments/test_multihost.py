"""A real two-process run on this machine (``jax.distributed`` on localhost, one CPU device per process): one set of
run files, checkpoints every process restores from, and the numbers of a one-process run."""

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import pytest

from experiments import build
from experiments import train
from experiments.configs import smoke
from metaprune_jax import checkpoint
from tests import test_utils

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(ROOT, 'experiments', 'configs', 'smoke.py')
TINY = {'outer.num_outer_steps': 10, 'eval.num_tasks': 4, 'eval.steps': (1,), 'run.tensorboard': False,
        'run.log_every_steps': 5, 'run.checkpoint_every_steps': 5}
RUN_FILES = ['.lock', 'checkpoints', 'config.json', 'evaluation.png', 'metrics.jsonl', 'model_spec.json',
             'report.md', 'summary.json', 'training.png']

pytestmark = pytest.mark.skipif(jax.default_backend() != 'cpu', reason='compares with a one-process CPU run')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _launch_two_processes(workdir: str, *extra: str) -> None:
  """Runs the tiny smoke config as processes 0 and 1 of one cluster; fails with both logs if either fails."""
  port = _free_port()
  flags = [f'--config={SMOKE}', *(f'--config.{p}={v if not isinstance(v, tuple) else "(1,)"}' for p, v in TINY.items()),
           '--config.run.distributed=True', '--config.run.num_devices=0', f'--workdir={workdir}',
           f'--coordinator_address=localhost:{port}', '--num_processes=2', *extra]
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu'}
  procs = [subprocess.Popen([sys.executable, '-m', 'experiments.maml_prune', *flags, f'--process_id={i}'], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    logs = [proc.communicate(timeout=400)[0] for proc in procs]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  codes = [proc.returncode for proc in procs]
  assert codes == [0, 0], '\n'.join(f'--- process {i} (exit {c}):\n{log[-3000:]}' for i, (c, log)
                                    in enumerate(zip(codes, logs)))


def _config(**changes):
  config = smoke.get_config()
  for path, value in {**TINY, **changes}.items():
    section, field = path.split('.')
    config[section][field] = value
  return config


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items() if k != 'steps_per_sec'} for line in f]


@pytest.fixture(scope='module')
def two_process_run(tmp_path_factory):
  """The tiny config run by two processes (checkpoints at 5 and 10); read-only by convention."""
  workdir = str(tmp_path_factory.mktemp('two_processes') / 'run')
  _launch_two_processes(workdir)
  return workdir


def test_two_processes_write_one_set_of_files_and_match_one_process(two_process_run, tmp_path):
  workdir, reference = two_process_run, str(tmp_path / 'one')
  assert sorted(os.listdir(workdir)) == RUN_FILES  # One set: no second lock, no temporary files.
  assert [step for step, _ in checkpoint.list_checkpoints(workdir)] == [5, 10]
  two = _records(workdir)
  assert [r['step'] for r in two] == [5, 10]  # Process 1 appended nothing.

  summary = train.run(_config(), reference)  # One process, one device.
  one = _records(reference)
  for a, b in zip(two, one):
    assert a.keys() == b.keys()
    for key in a:
      test_utils.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5, err_msg=key)
  with open(os.path.join(workdir, 'summary.json')) as f:
    two_summary = json.load(f)
  test_utils.assert_close(two_summary['eval']['sparse']['shots_5']['step_1']['mean'],
                          summary['eval']['sparse']['shots_5']['step_1']['mean'], rtol=1e-5, atol=1e-5)

  # The two processes' checkpoint restores in one process, to the one-process run's state.
  template = build.build(_config()).init_state()
  test_utils.assert_trees_all_close(checkpoint.restore_latest(template, workdir).meta_params,
                                    checkpoint.restore_latest(template, reference).meta_params, rtol=1e-5, atol=1e-5)


def test_cluster_flags_without_distributed_are_one_error_line(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'experiments.maml_prune', f'--config={SMOKE}', '--num_processes=2',
                           '--process_id=0', f'--workdir={tmp_path}'], cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT},
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      'error: --num_processes, --process_id given without --config.run.distributed=True: pass it as well for a '
      'multi-host run (one launcher per host), or drop them.')
  assert not os.listdir(tmp_path)


def test_two_processes_resume_from_their_checkpoint(two_process_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(two_process_run, workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '10'))  # As if killed between steps 5 and 10.
  _launch_two_processes(workdir)
  assert _records(workdir) == _records(two_process_run)
  with open(os.path.join(workdir, 'summary.json')) as f:
    assert json.load(f)['timings']['start_step'] == 5
