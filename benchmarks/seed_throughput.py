"""Seed-steps per second of ``--config.num_seeds=N`` against one seed per process; prints JSON.

``python -m benchmarks.seed_throughput [--task=sinusoid --num_seeds=8 --steps=1000 --repeats=5]``

Builds the task's config (``experiments/configs/<task>.py``, ``--config.*`` overrides accepted) and times, in
one process and round-robin (so a drift in machine load hits both alike), the jitted meta-step of one seed and
the stacked step of ``num_seeds`` seeds (``experiments.seeds``), each ``run.steps_per_call`` meta-steps per
call as the launcher runs them, ``block_until_ready`` after every timing. Compile time (first call) is
reported apart; rates are medians over ``--repeats`` timings of ``--steps`` meta-steps.

``seed_steps_per_sec``: meta-steps per second times the seeds advanced. N separate runs advance
``single.seed_steps_per_sec`` together when run one after another, and at most ``cores`` times that when
they run side by side (if XLA used one core each), so ``speedup_vs_sequential`` and ``speedup_vs_parallel_bound``
bracket what ``num_seeds`` gains over N separate runs (compiling once instead of N times comes on top).
``wide_batch`` is one seed with N times the meta-batch: the same task work per call as the stacked step, so
``batching_bound`` (its task throughput over the single seed's) is what batching more work per call can gain
on this machine at all; where it is near 1, the single step is compute-bound and stacking seeds cannot help.
"""

import json
import os
import platform
import statistics
import time

import jax
from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import build as build_lib
from experiments import config_check
from experiments import seeds as seeds_lib

_TASK = flags.DEFINE_string('task', 'sinusoid', 'Task family (experiments/configs/<task>.py).')
_NUM_SEEDS = flags.DEFINE_integer('num_seeds', 8, 'Seeds of the stacked step.')
_STEPS = flags.DEFINE_integer('steps', 1000, 'Meta-steps per timing (a multiple of run.steps_per_call).')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timings per variant (median reported).')
_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (default experiments/configs/<task>.py).')


def _first_call(step, state):
  t0 = time.perf_counter()
  state, metrics = step(state)
  jax.block_until_ready(metrics)
  return state, time.perf_counter() - t0


def measure(config, num_seeds: int, steps: int, repeats: int) -> dict:
  """Compile seconds and median meta-steps per second of one seed and of ``num_seeds`` stacked seeds."""
  config.num_seeds = 1
  single = build_lib.build(config)
  stacked_config = seeds_lib.seed_config(config, int(config.seed))
  stacked_config.num_seeds = num_seeds
  stacked = seeds_lib.stacked(build_lib.build(stacked_config))
  wide_config = seeds_lib.seed_config(config, int(config.seed))
  wide_config.outer.meta_batch_size = int(config.outer.meta_batch_size) * num_seeds
  wide = build_lib.build(wide_config)
  per_call = int(config.run.steps_per_call)
  calls = max(steps // per_call, 1)
  variants = {'single': single, 'stacked': stacked, 'wide_batch': wide}
  states, compile_seconds, rates = {}, {}, {name: [] for name in variants}
  step_fns = {name: exp.make_step(per_call) for name, exp in variants.items()}
  for name, exp in variants.items():
    states[name], compile_seconds[name] = _first_call(step_fns[name], exp.init_state())
  for _ in range(repeats):
    for name in variants:
      state = states[name]
      t0 = time.perf_counter()
      for _ in range(calls):
        state, metrics = step_fns[name](state)
      jax.block_until_ready((state, metrics))
      rates[name].append(calls * per_call / (time.perf_counter() - t0))
      states[name] = state
  out = {}
  for name, seeds in (('single', 1), ('stacked', num_seeds), ('wide_batch', num_seeds)):
    rate = statistics.median(rates[name])
    out[name] = {'num_seeds': seeds, 'compile_seconds': compile_seconds[name], 'steps_per_sec': rate,
                 'seed_steps_per_sec': seeds * rate, 'steps_per_sec_all': rates[name]}
  cores = os.cpu_count() or 1
  ratio = out['stacked']['seed_steps_per_sec'] / out['single']['seed_steps_per_sec']
  out['speedup_vs_sequential'] = ratio
  out['speedup_vs_parallel_bound'] = ratio / min(cores, num_seeds)
  # One seed with num_seeds x the tasks per step does the stacked step's task work with shared weights: the
  # gain of batching alone (its 'seed_steps_per_sec' counts task batches of the one-seed size).
  out['batching_bound'] = out['wide_batch']['seed_steps_per_sec'] / out['single']['seed_steps_per_sec']
  return out


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    config = config_check.load_config_file(os.path.join('experiments', 'configs', f'{_TASK.value}.py'))
  result = measure(config, _NUM_SEEDS.value, _STEPS.value, _REPEATS.value)
  result.update(task=config.task.name, steps=_STEPS.value, repeats=_REPEATS.value,
                steps_per_call=int(config.run.steps_per_call), algorithm=config.algorithm, mask=config.gates.mask,
                backend=jax.default_backend(), devices=[d.device_kind for d in jax.devices()],
                cpu_count=os.cpu_count(), machine=platform.machine(), jax=jax.__version__)
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  app.run(main)
