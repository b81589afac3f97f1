"""Are int8 matmuls faster than float32 ones on this backend? Median latencies and ratios; prints JSON.

Times ``x [batch, in] @ w [in, out]`` for the matmuls this project runs: the Conv-4 im2col matmul
(3*3*64 -> 64), the Conv-4 head (64 -> 5) and the sinusoid MLP's hidden layer (40 -> 40), at batch 1, 600
(an evaluation batch) and 9600 (600 images x 4x4 positions), in four ways:

* ``float32``: ``x @ w``;
* ``weight_only``: ``quantize.quantized_dot(x, qw, 'weight_only')``, the int8 weight dequantized in the jit;
* ``dynamic_int8``: ``quantize.quantized_dot(x, qw, 'dynamic_int8')``, x quantized per row in the jit, an
  int8 x int8 -> int32 matmul and the rescales;
* ``int8_gemm_only``: the int8 x int8 -> int32 ``dot_general`` of pre-quantized operands alone, the floor of
  any int8 path.

Each function is jitted and compiled ahead of time (compile seconds reported apart), warmed up, then timed
call by call with ``block_until_ready`` in interleaved rounds (every round visits every case and way, the ways
in a rotating order) so that load drifts hit all alike; the median per-call latency is reported with the ratio
to float32. ``lowering`` records whether an s8 dot survives XLA's optimisation and which custom fusions
run it.

Usage: python -m benchmarks.int8_matmul [--quick] [--repeats=7] [--target_ms=30]
"""

import itertools
import json
import os
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from metaprune_jax.export import quantize

SHAPES = {'conv4_im2col': (576, 64), 'conv4_head': (64, 5), 'sinusoid_hidden': (40, 40)}
BATCHES = (1, 600, 9600)
QUICK_BATCHES = (600,)
WAYS = ('float32', 'weight_only', 'dynamic_int8', 'int8_gemm_only')
_WARMUP_CALLS = 3
_MAX_CALLS_PER_TIMING = 2000


def _int8_dot(qx, qw):
  return jax.lax.dot_general(qx, qw, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)


def _functions_and_args(batch: int, shape: tuple[int, int], key: jax.Array) -> dict:
  """``{way: (function, args)}`` for ``x [batch, in] @ w [in, out]``."""
  x_key, w_key = jax.random.split(key)
  x = jax.random.normal(x_key, (batch, shape[0]))
  w = jax.random.normal(w_key, shape)
  qw = quantize.quantize_weight(w)
  qx = jnp.clip(jnp.round(x / (jnp.abs(x).max(-1, keepdims=True) / 127)), -127, 127).astype(jnp.int8)
  return {'float32': (jnp.matmul, (x, w)),
          'weight_only': (lambda a, b: quantize.quantized_dot(a, b, 'weight_only'), (x, qw)),
          'dynamic_int8': (lambda a, b: quantize.quantized_dot(a, b, 'dynamic_int8'), (x, qw)),
          'int8_gemm_only': (_int8_dot, (qx, qw.qvalue))}


def _compile(function, args) -> tuple:
  t0 = time.perf_counter()
  compiled = jax.jit(function).lower(*args).compile()
  return compiled, time.perf_counter() - t0


def _seconds_per_call(compiled, args, calls: int) -> float:
  t0 = time.perf_counter()
  for _ in range(calls):
    compiled(*args).block_until_ready()
  return (time.perf_counter() - t0) / calls


def _lowering(compiled) -> dict:
  text = compiled.as_text()
  return {'s8_dot_after_optimisation': bool(re.search(r's32\[[^\]]*\][^\n]*\bdot\(', text)) and 's8[' in text,
          'custom_fusions': sorted(set(re.findall(r'"kind":"(__\w+)"', text)))}


def run(*, batches=BATCHES, repeats: int = 7, target_seconds: float = 0.03, seed: int = 0) -> dict:
  """Times every (shape, batch, way); returns the JSON-ready results."""
  cases = {f'{name}/batch{batch}': (batch, shape) for name, shape in SHAPES.items() for batch in batches}
  keys = jax.random.split(jax.random.key(seed), len(cases))
  compiled, compile_seconds, calls, timings, lowering = {}, {}, {}, {}, {}
  for key, (case, (batch, shape)) in zip(keys, cases.items()):
    for way, (function, args) in _functions_and_args(batch, shape, key).items():
      c, seconds = _compile(function, args)
      _seconds_per_call(c, args, _WARMUP_CALLS)
      estimate = _seconds_per_call(c, args, 1)
      compiled[case, way] = (c, args)
      compile_seconds[case, way] = seconds
      calls[case, way] = int(np.clip(target_seconds / max(estimate, 1e-9), 1, _MAX_CALLS_PER_TIMING))
      timings[case, way] = []
      if way in ('dynamic_int8', 'int8_gemm_only'):
        lowering[case, way] = _lowering(c)
  for round_index in range(repeats):
    order = WAYS[round_index % len(WAYS):] + WAYS[:round_index % len(WAYS)]
    for case, way in itertools.product(cases, order):
      c, args = compiled[case, way]
      timings[case, way].append(_seconds_per_call(c, args, calls[case, way]))

  results = {}
  for case, (batch, shape) in cases.items():
    median_us = {way: statistics.median(timings[case, way]) * 1e6 for way in WAYS}
    results[case] = {
        'batch': batch, 'in_out': list(shape), 'flops': 2 * batch * shape[0] * shape[1],
        'median_us': {way: round(v, 2) for way, v in median_us.items()},
        'ratio_to_float32': {way: round(median_us[way] / median_us['float32'], 3) for way in WAYS[1:]},
        'spread_us': {way: [round(min(timings[case, way]) * 1e6, 2), round(max(timings[case, way]) * 1e6, 2)]
                      for way in WAYS},
        'calls_per_timing': {way: calls[case, way] for way in WAYS},
        'compile_seconds': {way: round(compile_seconds[case, way], 3) for way in WAYS},
        'lowering': {way: lowering[case, way] for way in ('dynamic_int8', 'int8_gemm_only')}}
  return {'benchmark': 'int8_matmul', 'backend': jax.default_backend(), 'devices': [str(d) for d in jax.devices()],
          'jax_version': jax.__version__, 'cpu_count': os.cpu_count(), 'load_average': list(os.getloadavg()),
          'repeats': repeats, 'target_seconds_per_timing': target_seconds, 'results': results}


def _define_flags():
  # Defined only when run as a script, so that importing this module (e.g. from another benchmark) cannot
  # collide with flags of the same name (--quick, --repeats) defined elsewhere.
  flags.DEFINE_bool('quick', False, 'Batch 600 only, 2 rounds, ~2 ms per timing (a smoke run).')
  flags.DEFINE_integer('repeats', 7, 'Interleaved timing rounds (median reported).')
  flags.DEFINE_float('target_ms', 30.0, 'Wall time of one timing; sets the calls per timing.')


def main(argv):
  del argv
  f = flags.FLAGS
  if f.quick:
    results = run(batches=QUICK_BATCHES, repeats=2, target_seconds=0.002)
  else:
    results = run(repeats=f.repeats, target_seconds=f.target_ms / 1e3)
  print(json.dumps(results, indent=2))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
