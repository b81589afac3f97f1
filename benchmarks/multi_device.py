"""Sharded meta-step throughput: 1 device vs N forced host devices (separate processes); prints JSON.

Each setting runs in its own process because ``XLA_FLAGS=--xla_force_host_platform_device_count``
must be set before JAX starts:

- ``1_device``: plain process, no mesh (the single-device path).
- ``N_devices_unsharded``: N forced host devices, no mesh (what forcing devices alone costs).
- ``N_devices_sharded``: N forced host devices, task batch sharded over a ``('tasks',)`` mesh.

Per setting and model: compile (first call) timed separately; then ``--repeats``
timings of ``--steps`` meta-steps with ``block_until_ready``; the median is
reported as meta-steps/s. Also one end-to-end tiny run (``experiments/configs/smoke.py``,
``train.run``: compile, 30 steps, checkpoints, evaluation) per setting: the unit a
sweep of tiny runs is made of. On a CPU the forced "devices" share the host's
cores, so this checks for sharding overhead, not for speed-up; on GPUs/TPUs run
with ``--num_devices`` equal to the local device count (no forced devices).

``--steps_per_call=K`` runs K meta-steps per jitted call in every setting (the
launcher's ``--config.run.steps_per_call``), so the per-call cost of dispatching
N device programs is paid once per K steps.

Usage: python -m benchmarks.multi_device [--num_devices=4 --steps=200 --repeats=5 --steps_per_call=1]
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

_NUM_DEVICES = flags.DEFINE_integer('num_devices', 4, 'Forced host devices of the sharded setting.')
_STEPS = flags.DEFINE_integer('steps', 200, 'Meta-steps per timing.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timings per model (median reported).')
_STEPS_PER_CALL = flags.DEFINE_integer('steps_per_call', 1, 'Meta-steps per jitted call (lax.scan), every setting.')
_CHILD = flags.DEFINE_string('child', None, 'Internal: run one setting in this process (mesh size).')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> config overrides (dotted paths) on experiments/configs/smoke.py (meta-batch divisible by 4 and 8).
MODELS = {'paper_2x40_batch24': {'model.hidden_sizes': (40, 40), 'outer.meta_batch_size': 24},
          'smoke_2x8_batch8': {'outer.meta_batch_size': 8}}


def _child(mesh_devices: int, steps: int, repeats: int, steps_per_call: int = 1) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from experiments import build  # pylint: disable=g-import-not-at-top
  from experiments import train  # pylint: disable=g-import-not-at-top
  from experiments.configs import smoke  # pylint: disable=g-import-not-at-top
  from metaprune_jax.meta import sharding  # pylint: disable=g-import-not-at-top

  out = {'device_count': jax.device_count(), 'mesh_devices': mesh_devices, 'models': {}}
  for name, overrides in MODELS.items():
    config = smoke.get_config()
    for path, value in overrides.items():
      section, field = path.split('.')
      config[section][field] = value
    config.run.num_devices = mesh_devices  # build's mesh: sharding.make_mesh(mesh_devices).
    exp = build.build(config)
    state = sharding.replicate(exp.init_state(), exp.mesh)
    step_fn = exp.make_step(steps_per_call)
    t0 = time.perf_counter()
    state, metrics = step_fn(state)
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - t0
    rates = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      for _ in range(steps // steps_per_call):
        state, metrics = step_fn(state)
      jax.block_until_ready((state, metrics))
      rates.append(steps / (time.perf_counter() - t0))
    out['models'][name] = {'compile_seconds': round(compile_seconds, 3),
                           'steps_per_sec_median': round(statistics.median(rates), 1),
                           'steps_per_sec_all': [round(r, 1) for r in rates]}
  config = smoke.get_config()
  config.outer.meta_batch_size, config.run.num_devices, config.run.tensorboard = 8, mesh_devices, False
  config.run.steps_per_call = steps_per_call
  with tempfile.TemporaryDirectory() as workdir:
    t0 = time.perf_counter()
    summary = train.run(config, workdir)
    out['tiny_run'] = {'wall_seconds': round(time.perf_counter() - t0, 2),
                       'compile_seconds': round(summary['timings']['compile_seconds'], 2),
                       'eval_seconds': round(summary['timings']['eval_seconds'], 2)}
  return out


def _spawn(forced_devices: int | None, mesh_devices: int) -> dict:
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)
  if forced_devices:
    env['XLA_FLAGS'] = (f'--xla_force_host_platform_device_count={forced_devices} '
                        '--xla_cpu_collective_call_terminate_timeout_seconds=20')
  for attempt in range(1, 6):  # See tests/meta/test_sharding.py: simulated devices > cores can starve.
    result = subprocess.run([sys.executable, '-m', 'benchmarks.multi_device', f'--child={mesh_devices}',
                             f'--steps={_STEPS.value}', f'--repeats={_REPEATS.value}',
                             f'--steps_per_call={_STEPS_PER_CALL.value}'], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=False)
    if result.returncode == 0 or 'Termination timeout for `all reduce' not in result.stderr:
      break
  if result.returncode:
    raise RuntimeError(result.stderr[-3000:])
  return {**json.loads(result.stdout.strip().splitlines()[-1]), 'attempts': attempt,
          'deadlocked_attempts': attempt - 1}


def main(argv):
  del argv
  if _CHILD.value is not None:
    print(json.dumps(_child(int(_CHILD.value), _STEPS.value, _REPEATS.value, _STEPS_PER_CALL.value)))
    return
  n = _NUM_DEVICES.value
  if _STEPS.value % _STEPS_PER_CALL.value:
    raise ValueError(f'--steps={_STEPS.value} must be a multiple of --steps_per_call={_STEPS_PER_CALL.value}.')
  settings = {'1_device': _spawn(None, 1), f'{n}_devices_unsharded': _spawn(n, 1),
              f'{n}_devices_sharded': _spawn(n, n)}
  ratios = {name: round(settings[f'{n}_devices_sharded']['models'][name]['steps_per_sec_median']
                        / settings['1_device']['models'][name]['steps_per_sec_median'], 3) for name in MODELS}
  print(json.dumps({'benchmark': 'multi_device', 'platform': 'cpu (forced host devices)',
                    'machine': platform.processor() or platform.machine(), 'cpu_count': os.cpu_count(),
                    'load_avg_1min': os.getloadavg()[0], 'steps': _STEPS.value, 'repeats': _REPEATS.value,
                    'steps_per_call': _STEPS_PER_CALL.value,
                    'sharded_over_1_device_throughput': ratios,
                    'tiny_run_wall_ratio_sharded_over_1': round(
                        settings[f'{n}_devices_sharded']['tiny_run']['wall_seconds']
                        / settings['1_device']['tiny_run']['wall_seconds'], 3),
                    'settings': settings}, indent=2))


if __name__ == '__main__':
  app.run(main)
