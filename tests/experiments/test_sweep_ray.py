"""Sweeps on Ray Tune (``--backend=ray``) on a real local Ray cluster, against the local backend; ``--dry_run``.

The cluster (2 CPUs, 2 pretend GPUs: Ray hands out ``CUDA_VISIBLE_DEVICES`` ids, which the CPU-only jaxlib
ignores) starts once for the module; each sweep joins it with ``--address``.
"""

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

import pytest

from experiments import sweep
from tests import test_utils

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Tiny runs (as test_sweep's) with a checkpoint at step 5 of 10, so a run killed after it resumes mid-way.
SPEC = f'''
def get_sweep():
  return {{'method': 'grid', 'parameters': {{'sparsity.target_sparsity': [0.5, 0.8]}}, 'seeds': SEEDS,
          'config': '{ROOT}/experiments/configs/smoke.py',
          'fixed': {{'outer.num_outer_steps': 10, 'eval.num_tasks': 8, 'eval.shots': (5,), 'run.tensorboard': False,
                    'run.log_every_steps': 5, 'run.checkpoint_every_steps': 5}},
          'metric': 'eval.sparse.shots_5.step_1.mean'}}
'''
# The columns that do not depend on timing.
SAME_COLUMNS = ('name', 'seed', 'sparsity.target_sparsity', 'status', 'metric', 'realised_sparsity', 'nonzero_params',
                'skipped_steps')


@pytest.fixture(scope='module')
def ray_address():
  """A local Ray cluster for the module; its GCS address. Shut down (and its temp folder removed) at the end."""
  import ray  # pylint: disable=g-import-not-at-top
  from experiments import sweep_ray  # pylint: disable=g-import-not-at-top
  os.environ[sweep_ray.USAGE_STATS_ENV] = '0'  # No usage report leaves the machine (the sweeps inherit it).
  temp_dir = tempfile.mkdtemp(prefix='ray', dir='/tmp')  # Short: Ray's socket paths must fit in 107 characters.
  context = ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp_dir,
                     object_store_memory=100 * 1024 * 1024)
  try:
    yield context.address_info['gcs_address']
  finally:
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _spec(tmp_path, seeds=(0,)):
  path = tmp_path / 'spec.py'
  path.write_text(SPEC.replace('SEEDS', repr(list(seeds))))
  return str(path)


def _sweep(spec_path, workdir, *extra, env=None, timeout=300):
  env = {**os.environ, 'PYTHONPATH': ROOT, **(env or {})}
  return subprocess.run([sys.executable, '-m', 'experiments.sweep', '--task=sinusoid', f'--sweep={spec_path}',
                         f'--workdir={workdir}', *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)


def _rows(workdir):
  with open(os.path.join(workdir, 'results.csv')) as f:
    return list(csv.DictReader(f))


def _live_runs(workdir) -> list[str]:
  """Command lines of live processes that run in ``workdir`` (a run left behind by a stopped trial)."""
  found = []
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        cmdline = f.read().decode(errors='replace').replace('\0', ' ')
    except OSError:
      continue
    if f'--workdir={workdir}' in cmdline and 'experiments.maml_prune' in cmdline:
      found.append(cmdline)
  return found


def test_ray_sweep_matches_local_and_retries_a_killed_worker(tmp_path, ray_address):
  spec_path = _spec(tmp_path, seeds=(0, 1))  # 4 trials.
  runs = sweep.expand(sweep.load_spec(spec_path))
  killed = runs[1]['name']
  local = _sweep(spec_path, tmp_path / 'local', '--parallel=2')
  assert local.returncode == 0, local.stderr[-3000:]
  result = _sweep(spec_path, tmp_path / 'ray', '--backend=ray', f'--address={ray_address}', '--trial_gpus=1',
                  '--max_failures=1', env={'METAPRUNE_SWEEP_TEST_KILL_WORKER': killed})
  assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
  assert len(runs) == 4 and '4 runs to do (0 complete already)' in result.stderr
  ray_rows, local_rows = _rows(tmp_path / 'ray'), _rows(tmp_path / 'local')
  assert [r['name'] for r in ray_rows] == [r['name'] for r in runs]
  for ray_row, local_row in zip(ray_rows, local_rows):
    assert ray_row['status'] == 'done'
    assert {c: ray_row[c] for c in SAME_COLUMNS} == {c: local_row[c] for c in SAME_COLUMNS}
  for run in runs:
    ray_summary, local_summary = (json.loads((tmp_path / d / 'runs' / run['name'] / 'summary.json').read_text())
                                  for d in ('ray', 'local'))
    test_utils.assert_trees_all_equal(ray_summary['eval'], local_summary['eval'])
    test_utils.assert_trees_all_equal(ray_summary['sparsity'], local_summary['sparsity'])
  # The killed trial: its worker died once after the step-5 checkpoint; the retry resumed the run from it.
  killed_dir = tmp_path / 'ray' / 'runs' / killed
  assert (killed_dir / 'test_killed_worker').exists()
  log = (killed_dir / 'run.log').read_text()
  assert log.count('--- ray trial on') == 2 and 'Resumed from checkpoint at step' in log, log[-3000:]
  # Each trial's run saw only the one GPU Ray gave it (two trials side by side hold different ids).
  first_ids = [(tmp_path / 'ray' / 'runs' / r['name'] / 'run.log').read_text().split('\n', 1)[0] for r in runs]
  ids = [line.rsplit('CUDA_VISIBLE_DEVICES=', 1)[-1] for line in first_ids]
  assert all('CUDA_VISIBLE_DEVICES=' in line for line in first_ids) and set(ids) == {'0', '1'}, first_ids
  for name in ('results.md', 'sweep.png'):
    assert (tmp_path / 'ray' / name).stat().st_size > 0
  assert not _live_runs(str(tmp_path / 'ray'))


def test_asha_stops_the_worse_trial_and_a_rerun_skips_it(tmp_path, ray_address):
  spec_path = _spec(tmp_path)
  runs = sweep.expand(sweep.load_spec(spec_path))
  workdir = tmp_path / 'asha'
  # One trial at a time (2 CPUs each), in order: at step 5 the second (target 0.8: higher outer/objective than 0.5's)
  # is below ASHA's cutoff and stopped.
  flags = ['--backend=ray', f'--address={ray_address}', '--trial_cpus=2', '--scheduler=asha',
           '--scheduler_metric=outer/objective', '--scheduler_mode=min', '--asha_grace_steps=5',
           '--asha_reduction_factor=2']
  result = _sweep(spec_path, workdir, *flags)
  assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
  assert [r['status'] for r in _rows(workdir)] == ['done', 'early_stopped']
  stopped_dir = workdir / 'runs' / runs[1]['name']
  marker = json.loads((stopped_dir / 'early_stopped.json').read_text())
  assert marker['step'] == 5 and marker['scheduler_metric'] == 'outer/objective', marker
  assert not (stopped_dir / 'summary.json').exists()
  assert not _live_runs(str(workdir))  # The stopped trial's run was killed with it.
  assert '1 stopped early by ASHA' in (workdir / 'results.md').read_text()
  rerun = _sweep(spec_path, workdir, *flags)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert '0 runs to do (1 complete already, 1 stopped early)' in rerun.stderr


def test_dry_run_prints_the_commands_of_the_runs_to_do(tmp_path):
  spec_path = _spec(tmp_path)
  spec = sweep.load_spec(spec_path)
  runs = sweep.expand(spec)
  workdir = tmp_path / 'sweep'
  done = workdir / 'runs' / runs[0]['name']
  done.mkdir(parents=True)
  (done / 'summary.json').write_text(json.dumps({'eval': {}}))
  for backend in ('local', 'ray'):
    result = _sweep(spec_path, workdir, f'--backend={backend}', '--dry_run', timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout  # The complete run is left out.
    words = shlex.split(lines[0])
    assert words[:3] == ['cd', ROOT, '&&']
    assert words[3:] == sweep.run_command('sinusoid', spec, runs[1], sweep.run_dir(str(workdir), runs[1]))
  assert sorted(os.listdir(workdir)) == ['runs'] and os.listdir(workdir / 'runs') == [runs[0]['name']]


@pytest.mark.parametrize('flags,match', [
    (['--backend=slurm'], 'flag --backend=slurm: value should be one of <local|ray>'),
    (['--scheduler=asha', '--trial_gpus=1'], 'error: --trial_gpus, --scheduler need --backend=ray'),
    (['--backend=ray', '--parallel=2'], 'error: --parallel is for --backend=local'),
    (['--backend=ray', '--scheduler=asha'], 'error: --scheduler=asha needs --scheduler_metric=FIELD')])
def test_bad_backend_flags_are_one_clear_error(tmp_path, flags, match):
  result = _sweep(_spec(tmp_path), tmp_path / 'sweep', *flags, timeout=120)
  assert result.returncode != 0 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert match in result.stderr, result.stderr[-3000:]
  assert not (tmp_path / 'sweep').exists()
