r"""Latency of compact Conv-4 embeddings by kept channels per block against the FLOPs they keep; prints JSON.

Latency depends on the kept shapes, not on the weights' values, so this times
``metaprune_jax.export.forward.conv4_features`` (what an exported ProtoNet runs)
on random compact parameters of the given widths, interleaved with the dense
width-64 network in one process: per round every model is timed (``--calls``
calls, ``block_until_ready``), and the JSON reports per-call medians over
``--repeats`` rounds, the latency ratio to dense, the FLOP ratio (conv
multiply-adds, as ``benchmarks.export_speed.network_flops``) and their quotient.
Issue 18's bar asks an exported Conv-4 with >= 50% of its channels removed for
``latency ratio <= 1.5 x FLOP ratio`` at batch 600; ``--widths`` lists the
allocations to measure (``c0-c1-c2-c3``, comma-separated).

Run::

  python -m benchmarks.channel_latency [--widths=32-32-32-32,62-32-31-32] [--batches=600] [--repeats=7]
"""

import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from metaprune_jax.export import forward

DENSE = (64, 64, 64, 64)


def parse_widths(text: str) -> tuple[int, ...]:
  """``'32-32-32-32' -> (32, 32, 32, 32)``; a clear error naming ``--widths`` otherwise."""
  try:
    widths = tuple(int(w) for w in text.split('-'))
  except ValueError:
    widths = ()
  if not widths or any(w < 1 or w > 64 for w in widths):
    raise app.UsageError(f'--widths entry {text!r} is not c0-c1-...: channels per block in [1, 64] joined by "-".')
  return widths


def compact_params(key: jax.Array, widths: tuple[int, ...]) -> dict:
  """Random compact Conv-4 parameters with ``widths[i]`` output channels in block ``i`` (one input channel)."""
  params, fan_in = {}, 1
  for i, (width, k) in enumerate(zip(widths, jax.random.split(key, len(widths)))):
    params[f'conv_{i}'] = {'kernel': jax.random.normal(k, (3, 3, fan_in, width)) * np.sqrt(2.0 / (9 * fan_in))}
    params[f'norm_{i}'] = {'scale': jnp.ones((width,)), 'offset': jnp.zeros((width,))}
    fan_in = width
  return params


def conv_flops(widths: tuple[int, ...], image_size: int) -> int:
  """Multiply-add FLOPs (x2) of one image through the SAME 3x3 convolutions, each followed by a 2x2 pool."""
  total, side, fan_in = 0, image_size, 1
  for width in widths:
    total += 2 * side * side * 9 * fan_in * width
    side //= 2
    fan_in = width
  return total


def run(widths_list: list[tuple[int, ...]], *, batches=(600,), repeats: int = 7, calls: int = 3,
        image_size: int = 28) -> dict:
  """Medians per width and batch, ratios to dense and FLOP ratios (a JSON-ready dict)."""
  models = {'-'.join(map(str, w)): w for w in [DENSE] + [w for w in widths_list if w != DENSE]}
  apply = jax.jit(forward.conv4_features)
  params = {name: compact_params(jax.random.key(i), w) for i, (name, w) in enumerate(models.items())}
  images = {b: jax.random.uniform(jax.random.key(b), (b, image_size, image_size, 1)) for b in batches}
  compile_seconds = {}
  for name in models:
    for b in batches:
      start = time.perf_counter()
      jax.block_until_ready(apply(params[name], images[b]))
      compile_seconds[f'{name}@{b}'] = time.perf_counter() - start
  times = {(name, b): [] for name in models for b in batches}
  for _ in range(repeats):
    for name in models:
      for b in batches:
        start = time.perf_counter()
        for _ in range(calls):
          out = apply(params[name], images[b])
        jax.block_until_ready(out)
        times[(name, b)].append((time.perf_counter() - start) / calls)
  dense_name = '-'.join(map(str, DENSE))
  dense_flops = conv_flops(DENSE, image_size)
  result = {'backend': jax.default_backend(), 'device': str(jax.devices()[0]), 'repeats': repeats, 'calls': calls,
            'image_size': image_size, 'compile_seconds': compile_seconds, 'models': []}
  for name, widths in models.items():
    flop_ratio = conv_flops(widths, image_size) / dense_flops
    row = {'widths': list(widths), 'channels_removed': 1.0 - sum(widths) / sum(DENSE), 'flop_ratio': flop_ratio}
    for b in batches:
      median = statistics.median(times[(name, b)])
      ratio = median / statistics.median(times[(dense_name, b)])
      row[f'batch_{b}'] = {'median_ms': 1e3 * median, 'latency_ratio': ratio, 'latency_over_flop_ratio': ratio / flop_ratio}
    result['models'].append(row)
  return result


def define_flags() -> None:
  """The script's flags (defined only when run as a script, so tests can import this module beside others)."""
  flags.DEFINE_list('widths', ['62-32-31-32', '32-32-32-32', '16-32-32-32', '16-16-16-16', '48-24-24-24',
                               '8-32-48-48', '24-24-40-40'],
                    'Kept channels per conv block, c0-c1-c2-c3; the dense 64-64-64-64 is always timed.')
  flags.DEFINE_list('batches', ['600'], 'Batch sizes to time.')
  flags.DEFINE_integer('repeats', 7, 'Interleaved rounds; medians over them.')
  flags.DEFINE_integer('calls', 3, 'Calls per model per round.')
  flags.DEFINE_integer('image_size', 28, 'Side of the square one-channel input images.')


def main(argv):
  del argv
  values = flags.FLAGS
  widths = [parse_widths(w) for w in values.widths]
  print(json.dumps(run(widths, batches=tuple(int(b) for b in values.batches), repeats=values.repeats,
                       calls=values.calls, image_size=values.image_size), indent=1))


if __name__ == '__main__':
  define_flags()
  app.run(main)
