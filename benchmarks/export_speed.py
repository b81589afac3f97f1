r"""Inference latency of a run's dense, masked and exported (compact float / int8) models, interleaved.

For the run in ``--workdir`` and its exports (``python -m experiments.export``):

* ``dense``: the export's forward pass (``metaprune_jax.export.forward``) on the
  run's full-size weights, no masks: the same operations as the export, so the
  ratio isolates what removing units saves;
* ``masked``: the training code's network with the deterministic gates
  multiplied in per call (pruning saves nothing there);
* ``export`` / ``export_int8``: ``load_compact(DIR).apply`` on the compact
  arrays (int8 exports are dequantized at load and run in float32: on XLA:CPU
  int8 matmuls are not faster end to end, see ``benchmarks/int8_matmul.py``).

The outputs are what the learner consumes: logits for head-based learners,
the embedding for prototypical networks. Inputs are held-out query images (or
sinusoid inputs) tiled to each ``--batches`` size. Each model is jitted and
compiled first (compile seconds reported apart), then every round times every
model and batch size in turn (``--calls`` calls each, ``block_until_ready``); the
JSON reports per-call medians over ``--repeats`` rounds, the ratios to dense and
the FLOP ratio of the compact model (conv / dense layers; batch norm, ReLU and
pooling not counted).

Run::

  python -m benchmarks.export_speed --workdir=RUN --export=DIR [--export_int8=DIR8] [--batches=1,600]
"""

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags

from experiments import build
from experiments import evaluation
from metaprune_jax.export import forward
from metaprune_jax.export import model as model_lib
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import masking
from metaprune_jax.nets import conv


def network_flops(params, spec: dict) -> int:
  """Multiply-add FLOPs (x2) of one example through the conv / dense layers of ``params`` (any size)."""
  if spec['arch'] == 'conv4':
    total, side, i = 0, int(spec['image_size']), 0
    while f'conv_{i}' in params:
      total += 2 * side * side * int(np.size(params[f'conv_{i}']['kernel']))
      side //= 2
      i += 1
    if 'head' in params and model_lib.adapts(spec):
      total += 2 * int(np.size(params['head']['kernel']))
    return total
  if spec['arch'] == 'mlp':
    return sum(2 * int(np.size(layer['kernel'])) for layer in params.values())
  raise ValueError(f"network_flops counts mlp and conv4 models, not {spec['arch']!r}.")


def _inputs(exp, batch: int) -> jax.Array:
  config = exp.config
  ways = (tuple(config.eval.ways) or (None,))[0]
  tasks = evaluation.held_out_tasks(config, exp.problem, int(config.eval.shots[0]), ways)
  pool = np.asarray(tasks.query_inputs).reshape((-1,) + tuple(tasks.query_inputs.shape[2:]))
  return jnp.asarray(np.resize(pool, (batch,) + pool.shape[1:]))


def _timed(fn, x, calls: int) -> float:
  start = time.perf_counter()
  for _ in range(calls):
    out = fn(x)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / calls


def conv4_blocks(params, images, method: str = 'conv') -> list[tuple[str, object, jax.Array]]:
  """``(name, jitted fn, its input)`` for each Conv-4 block's convolution and its norm / ReLU / pool."""
  blocks, x, i = [], images, 0
  while f'conv_{i}' in params:
    layer, norm = params[f'conv_{i}'], params[f'norm_{i}']
    conv_fn = jax.jit(lambda x, k=layer['kernel']: conv.conv2d(x, k, method=method))
    blocks.append((f'conv_{i}', conv_fn, x))
    y = conv_fn(x)
    if layer.get('border_bias') is not None:
      y = y + forward.expand_border(layer['border_bias'], y.shape[1], y.shape[2])
    pool_fn = jax.jit(lambda y, s=norm['scale'], o=norm['offset']: forward.norm_relu_pool(y, s, o))
    blocks.append((f'norm_relu_pool_{i}', pool_fn, y))
    x = pool_fn(y)
    i += 1
  return blocks


def per_block(models: dict, images, repeats: int, calls: int) -> dict:
  """Median milliseconds of each Conv-4 block of each ``{name: params}``, interleaved."""
  blocks = {name: conv4_blocks(params, images) for name, params in models.items()}
  samples = {(name, block): [] for name, bl in blocks.items() for block, _, _ in bl}
  for name, bl in blocks.items():
    for _, fn, x in bl:
      jax.block_until_ready(fn(x))
  for _ in range(repeats):
    for name, bl in blocks.items():
      for block, fn, x in bl:
        samples[(name, block)].append(_timed(fn, x, calls))
  return {name: {block: statistics.median(samples[(name, block)]) * 1e3 for block, _, _ in bl}
          for name, bl in blocks.items()}


def run(workdir: str, exports: dict[str, str], *, batches=(1, 600), repeats: int = 7, calls: int = 20) -> dict:
  """The benchmark as a dict (module docstring); ``exports`` maps a model name to an export folder."""
  exp, state = build.load(workdir)
  params = state.meta_params['params']
  masks = hard_concrete.deterministic_gates(state.meta_params['gate_logits'], exp.settings.hc)
  loaded = {name: model_lib.load_compact(folder) for name, folder in exports.items()}
  spec = next(iter(loaded.values())).spec
  network = exp.problem.embed_fn if not model_lib.adapts(spec) else exp.problem.apply_fn
  export_forward = model_lib.apply_fn(spec)
  models = {'dense': jax.jit(lambda x: export_forward(params, x)),
            'masked': jax.jit(lambda x: network(masking.apply_masks(params, masks), x))}
  for name, model in loaded.items():
    models[name] = jax.jit(lambda x, m=model: m.apply(m.params, x))
  inputs = {b: _inputs(exp, b) for b in batches}
  compile_s = {}
  for name, fn in models.items():
    start = time.perf_counter()
    for b in batches:
      jax.block_until_ready(fn(inputs[b]))
    compile_s[name] = time.perf_counter() - start
  samples = {(name, b): [] for name in models for b in batches}
  for _ in range(repeats):
    for b in batches:
      for name, fn in models.items():
        samples[(name, b)].append(_timed(fn, inputs[b], calls))
  dense_flops = network_flops(jax.device_get(params), spec)
  result = {'workdir': workdir, 'exports': exports, 'backend': jax.default_backend(),
            'devices': [d.device_kind for d in jax.devices()], 'load_average': list(os.getloadavg()),
            'repeats': repeats, 'calls_per_timing': calls, 'compile_s': compile_s,
            'flop_ratio': {name: network_flops(m.params, spec) / dense_flops for name, m in loaded.items()},
            'bytes': {name: m.metadata['artifact_bytes'] for name, m in loaded.items()},
            'dense_bytes': next(iter(loaded.values())).metadata['dense_bytes'], 'batches': {}}
  for b in batches:
    medians = {name: statistics.median(samples[(name, b)]) * 1e6 for name in models}
    result['batches'][str(b)] = {'median_us': medians,
                                 'ratio_to_dense': {name: medians[name] / medians['dense'] for name in models}}
  if spec['arch'] == 'conv4':  # Where the time goes, block by block, at the largest batch.
    result['per_block_ms'] = per_block({'dense': params, **{name: m.params for name, m in loaded.items()}},
                                       inputs[max(batches)], repeats, max(1, calls // 4))
  return result


def define_flags() -> None:
  """The script's flags (defined only when run as a script, so tests can import this module)."""
  flags.DEFINE_string('workdir', None, 'The run folder.')
  flags.DEFINE_string('export', None, 'Its float32 export folder.')
  flags.DEFINE_string('export_int8', None, 'Its int8 export folder (optional).')
  flags.DEFINE_list('batches', ['1', '600'], 'Batch sizes.')
  flags.DEFINE_integer('repeats', 7, 'Interleaved rounds.')
  flags.DEFINE_integer('calls', 20, 'Calls per timing.')


def main(argv):
  del argv
  values = flags.FLAGS
  exports = {'export': values.export}
  if values.export_int8:
    exports['export_int8'] = values.export_int8
  print(json.dumps(run(values.workdir, exports, batches=tuple(int(b) for b in values.batches),
                       repeats=values.repeats, calls=values.calls), indent=1))


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['workdir', 'export'])
  app.run(main)
