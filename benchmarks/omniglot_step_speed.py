r"""Speed of the Omniglot meta-step as training runs it (``meta.step.make_meta_step``).

Config (the issue's speed bar): 5-way 1-shot, 1 query per class, 28x28 real
Omniglot episodes sampled on device inside the step, Conv-4 with 64 channels,
meta-batch 32, 1 inner step, second-order MAML, Adam; dense (``mask='none'``)
and gated (hard-concrete gates per weight on the conv kernels, sampled per task).
Timing: compile separately (``lower().compile()``), ``--warmup`` steps, then the
median of ``--steps`` timed steps (each ``block_until_ready``). GFLOP/s = XLA's
own FLOP count of the compiled step (``cost_analysis``) x steps/s. The CPU is
shared: the JSON records the load average before and after.

Run::

  python -m benchmarks.omniglot_step_speed [--steps=10] [--variants=dense,gated] [--algorithm=maml]
  # ProtoNet training step (one 20-way 1-shot episode, 5 queries per class):
  python -m benchmarks.omniglot_step_speed --algorithm=protonet --meta_batch_size=1 --ways=20 --queries=5
"""

import json
import os
import statistics
import time

from absl import app
from absl import flags
import jax

from experiments import build
from experiments import problems
from experiments.configs import omniglot as omniglot_config

_STEPS = flags.DEFINE_integer('steps', 10, 'Timed meta-steps (median reported).')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
_VARIANTS = flags.DEFINE_string('variants', 'dense,gated', 'Comma-separated subset of dense,gated.')
_ALGORITHM = flags.DEFINE_string('algorithm', 'maml', 'Learner (meta.learners.LEARNERS).')
_WAYS = flags.DEFINE_integer('ways', 5, 'Classes per episode.')
_QUERIES = flags.DEFINE_integer('queries', 1, 'Query images per class.')
_META_BATCH_SIZE = flags.DEFINE_integer('meta_batch_size', 32, 'Tasks per meta-step.')
_CHUNK = flags.DEFINE_integer('task_chunk_size', 0, '> 0: lax.map over chunks of this many vmapped tasks.')
_METHOD = flags.DEFINE_string('conv_method', 'auto', "Conv-4 formulation: 'auto' (experiments.problems.conv_method), "
                              "'patches' or 'conv'.")
_PYTHON_LOOP = flags.DEFINE_bool('inner_python_loop', True, 'Unroll the inner step in Python (else lax.scan).')


def bench_config(variant: str):
  config = omniglot_config.get_config()
  config.task.ways, config.task.shots, config.task.queries = _WAYS.value, 1, _QUERIES.value
  config.task.train_shift = 0
  config.model.conv_width, config.model.conv_depth = 64, 4
  config.outer.meta_batch_size = _META_BATCH_SIZE.value
  config.inner.num_inner_steps, config.inner.first_order = 1, False
  config.algorithm = _ALGORITHM.value
  config.execution.python_loop = _PYTHON_LOOP.value
  config.execution.task_chunk_size = _CHUNK.value
  config.execution.conv_method = _METHOD.value
  config.gates.mask = 'none' if variant == 'dense' else 'hard_concrete'
  config.eval.ways = (_WAYS.value,)
  return config


def bench(variant: str) -> dict:
  config = bench_config(variant)
  exp = build.build(config)
  state, step = exp.init_state(), exp.make_step(1)
  start = time.perf_counter()
  compiled = step.lower(state).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flop = float(cost.get('flops', float('nan')))
  for _ in range(_WARMUP.value):
    state, metrics = compiled(state)
  jax.block_until_ready(state)
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    state, metrics = compiled(state)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return {'conv_method_used': problems.conv_method(config), 'compile_s': round(compile_s, 2), 'median_step_s': round(median, 4),
          'meta_steps_per_s': round(1.0 / median, 3), 'timed_steps': len(times),
          'xla_gflop_per_step': round(flop / 1e9, 2), 'gflop_per_s': round(flop / 1e9 / median, 1),
          'final_query_loss': float(metrics['outer/query_loss'])}


def main(argv):
  del argv
  results = {'config': {'ways': _WAYS.value, 'shots': 1, 'queries_per_class': _QUERIES.value,
                        'image': [28, 28, 1], 'width': 64, 'depth': 4, 'meta_batch_size': _META_BATCH_SIZE.value, 'inner_steps': 1,
                        'second_order': True, 'algorithm': _ALGORITHM.value,
                        'inner_python_loop': _PYTHON_LOOP.value, 'task_chunk_size': _CHUNK.value,
                        'conv_method': _METHOD.value},
             'backend': jax.default_backend(), 'load_average_before': list(os.getloadavg()), 'variants': {}}
  for variant in [v for v in _VARIANTS.value.split(',') if v]:
    if variant not in ('dense', 'gated'):
      raise ValueError(f'--variants: unknown {variant!r}; valid: dense, gated.')
    results['variants'][variant] = bench(variant)
  if {'dense', 'gated'} <= set(results['variants']):
    results['gated_over_dense_time'] = round(results['variants']['gated']['median_step_s']
                                             / results['variants']['dense']['median_step_s'], 3)
  results['load_average_after'] = list(os.getloadavg())
  print(json.dumps(results, indent=2))


if __name__ == '__main__':
  app.run(main)
