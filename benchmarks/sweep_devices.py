"""Wall time of a sweep of tiny runs: 1 device vs N forced host devices; prints JSON.

The issue-6 bar as a measurement: ``experiments.sweep`` over ``--runs`` tiny
sinusoid runs (``experiments/configs/smoke.py``, meta-batch 8, one seed each),
run end to end as a user runs it (one process per run, ``--parallel`` at a time),
in three settings:

- ``1_device``: a plain CPU process (one device), ``num_devices=1``.
- ``N_devices_default``: ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
  and ``num_devices=0`` ("every device that helps", what a user on a
  multi-device host passes): resolved to 1 on a single-process CPU.
- ``N_devices_sharded``: the same forced devices with ``num_devices=N``: every
  run shards its task batch over the N simulated devices.

Each setting runs ``--repeats`` times, interleaved (1, default, sharded, 1,
...) so that a changing CPU load hits every setting alike; each repeat starts
from an empty sweep folder (nothing skipped). Reported: median wall seconds per
setting, the ratio to ``1_device``, and the swept metric of every run, which must
agree across settings (same seeds: same numbers, up to float tolerance when sharded).

Usage: python -m benchmarks.sweep_devices [--num_devices=4 --runs=4 --repeats=3 --parallel=1]
"""

import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

_NUM_DEVICES = flags.DEFINE_integer('num_devices', 4, 'Forced host devices.')
_RUNS = flags.DEFINE_integer('runs', 4, 'Tiny runs in the sweep (one seed each).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Sweeps per setting (median reported).')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'experiments.sweep --parallel.')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRIC = 'eval.sparse.shots_10.step_2.mean'

SPEC = """
def get_sweep():
  return {{'method': 'grid', 'parameters': {{'run.num_devices': [{num_devices}]}}, 'seeds': list(range({runs})),
          'config': 'experiments/configs/smoke.py',
          'fixed': {{'outer.meta_batch_size': 8, 'run.tensorboard': False}},
          'metric': '{metric}'}}
"""


def sweep_once(forced_devices: int | None, num_devices: int, runs: int, parallel: int) -> dict:
  """One sweep in a fresh folder: wall seconds and the metric per run."""
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)
  if forced_devices:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={forced_devices}'
  with tempfile.TemporaryDirectory() as folder:
    spec = os.path.join(folder, 'spec.py')
    with open(spec, 'w') as f:
      f.write(SPEC.format(num_devices=num_devices, runs=runs, metric=METRIC))
    start = time.perf_counter()
    result = subprocess.run([sys.executable, '-m', 'experiments.sweep', '--task=sinusoid', f'--sweep={spec}',
                             f'--workdir={folder}/sweep', f'--parallel={parallel}'], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode:
      raise RuntimeError(f'sweep failed (forced devices {forced_devices}, num_devices {num_devices}):\n'
                         f'{result.stderr[-3000:]}')
    with open(os.path.join(folder, 'sweep', 'results.csv')) as f:
      rows = list(csv.DictReader(f))
  metric = {row['seed']: float(row['metric']) for row in rows}
  return {'wall_seconds': wall, 'metric': dict(sorted(metric.items()))}


def main(argv):
  del argv
  n, runs, parallel = _NUM_DEVICES.value, _RUNS.value, _PARALLEL.value
  settings = {'1_device': (None, 1), f'{n}_devices_default': (n, 0), f'{n}_devices_sharded': (n, n)}
  walls = {name: [] for name in settings}
  metrics = {}
  load_before = os.getloadavg()[0]
  for _ in range(_REPEATS.value):
    for name, (forced, num_devices) in settings.items():
      out = sweep_once(forced, num_devices, runs, parallel)
      walls[name].append(out['wall_seconds'])
      metrics[name] = out['metric']
  medians = {name: statistics.median(w) for name, w in walls.items()}
  reference = metrics['1_device']
  max_metric_diff = {name: max(abs(m[seed] - reference[seed]) for seed in reference) for name, m in metrics.items()}
  print(json.dumps({
      'benchmark': 'sweep_devices', 'runs': runs, 'parallel': parallel, 'repeats': _REPEATS.value,
      'config': 'experiments/configs/smoke.py, outer.meta_batch_size=8', 'cpu_count': os.cpu_count(),
      'load_avg_1min_before': load_before, 'load_avg_1min_after': os.getloadavg()[0],
      'median_wall_seconds': {k: round(v, 2) for k, v in medians.items()},
      'wall_ratio_over_1_device': {k: round(v / medians['1_device'], 3) for k, v in medians.items()},
      'all_wall_seconds': {k: [round(x, 2) for x in v] for k, v in walls.items()},
      'metric': METRIC, 'max_abs_metric_diff_vs_1_device': max_metric_diff,
      'metric_1_device': reference}, indent=2))


if __name__ == '__main__':
  app.run(main)
