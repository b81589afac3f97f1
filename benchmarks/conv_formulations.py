r"""Speed of the Conv-4 convolution formulations in a second-order MAML meta-step.

One meta-step, all inside one ``jax.jit``: for each of ``meta_batch_size``
tasks (``vmap``, ``in_axes`` 0 over tasks, None for meta-params) take 1 inner
SGD step on the support cross-entropy, evaluate the query cross-entropy with the
adapted (per-task) weights, differentiate the mean query loss through the inner
step (second order), then an Adam outer update. Config: 5-way 1-shot, 1 query
per class, 28x28x1 images, width 64, depth 4, meta-batch 32.

Formulations (``--formulations``, comma-separated):

* ``conv``: ``lax.conv_general_dilated`` under ``vmap`` (per-task kernels
  become a grouped convolution).
* ``patches``: ``conv4_apply(method='patches')``, im2col + batched matmul.
* ``conv_unrolled``: ``lax.conv_general_dilated`` with a Python loop over the
  tasks instead of ``vmap`` (the old workaround; long compile).

FLOPs per meta-step are XLA's own count for the compiled step
(``compiled.cost_analysis()['flops']``: 2 per multiply-add in dots and
convolutions, 1 per elementwise op), reported beside an analytic count of the
convolution/head multiply-adds alone (``analytic_conv_gflop``, see
``analytic_flops``). GFLOP/s = XLA FLOPs x meta-steps/s. ``first_step_loss``
(same params and data for every formulation) should agree across formulations
to ~1e-5.

The CPU is shared: the JSON records ``os.getloadavg()`` before and after, and
timings are only comparable within one run.

Run::

  python -m benchmarks.conv_formulations            # full config
  python -m benchmarks.conv_formulations --quick    # meta-batch 4, 3 timed steps
"""

import json
import os
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import optax

from metaprune_jax.nets import conv

_META_BATCH_SIZE = flags.DEFINE_integer('meta_batch_size', 32, 'Tasks per meta-step.')
_NUM_STEPS = flags.DEFINE_integer('num_steps', 10, 'Timed meta-steps (median reported).')
_FORMULATIONS = flags.DEFINE_string(
    'formulations', 'patches,conv', 'Comma-separated subset of '
    'patches,conv,conv_unrolled.')
_QUICK = flags.DEFINE_bool('quick', False, 'Small run: meta-batch 4, 3 timed steps.')
_MAX_SECONDS = flags.DEFINE_float(
    'max_seconds', 60.0, 'Stop timing a formulation after this many seconds '
    '(at least 2 timed steps).')

WAYS, SHOTS, QUERIES, IMAGE_SIZE, CHANNELS, WIDTH, DEPTH = 5, 1, 1, 28, 1, 64, 4
INNER_LR, OUTER_LR = 0.4, 1e-3


def analytic_flops(meta_batch_size: int) -> float:
  """FLOPs of the convolutions and head in one second-order MAML meta-step.

  One forward pass over an image costs ``F = 2 * sum_l H_l W_l 9 C_in C_out``
  (+ the head). A backward pass costs ``2F`` (input and weight gradients).
  Per task: the support set runs forward + backward (3F) and the outer
  gradient differentiates that again (about 2 x 3F = 6F), so 9F per support
  image; the query set runs forward + backward with the adapted weights, 3F
  per query image. Elementwise work (batch norm, ReLU, pooling) is left out.
  """
  side, cin, macs = IMAGE_SIZE, CHANNELS, 0
  for _ in range(DEPTH):
    macs += side * side * 9 * cin * WIDTH
    side, cin = side // 2, WIDTH
  macs += side * side * WIDTH * WAYS
  forward = 2 * macs
  per_task = 9 * forward * WAYS * SHOTS + 3 * forward * WAYS * QUERIES
  return per_task * meta_batch_size


def _make_meta_step(formulation: str, optimizer):
  """Returns ``meta_step(params, opt_state, batch) -> (params, opt_state, loss)``."""
  method = 'conv' if formulation == 'conv_unrolled' else formulation

  def loss_fn(params, images, labels):
    logits = conv.conv4_apply(params, images, method=method)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def task_loss(params, support_x, support_y, query_x, query_y):
    grads = jax.grad(loss_fn)(params, support_x, support_y)
    adapted = jax.tree.map(lambda p, g: p - INNER_LR * g, params, grads)
    return loss_fn(adapted, query_x, query_y)

  def outer_loss(params, batch):
    if formulation == 'conv_unrolled':
      losses = jnp.stack([
          task_loss(params, *(x[t] for x in batch))
          for t in range(batch[0].shape[0])])
    else:
      losses = jax.vmap(task_loss, in_axes=(None, 0, 0, 0, 0))(params, *batch)
    return losses.mean()

  def meta_step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(outer_loss)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(meta_step, donate_argnums=(0, 1))


def _batch(key, meta_batch_size):
  k_sx, k_qx = jax.random.split(key)
  shape = (meta_batch_size, WAYS * SHOTS, IMAGE_SIZE, IMAGE_SIZE, CHANNELS)
  qshape = (meta_batch_size, WAYS * QUERIES, IMAGE_SIZE, IMAGE_SIZE, CHANNELS)
  labels = jnp.tile(jnp.arange(WAYS), (meta_batch_size, 1))
  return (jax.random.uniform(k_sx, shape), labels,
          jax.random.uniform(k_qx, qshape), labels)


def bench(formulation, meta_batch_size, num_steps, max_seconds):
  """Compiles and times one formulation; returns a dict of figures."""
  key_init, key_data = jax.random.split(jax.random.key(0))
  params = conv.init_conv4(key_init, image_size=IMAGE_SIZE, in_channels=CHANNELS,
                           width=WIDTH, depth=DEPTH, num_classes=WAYS)
  optimizer = optax.adam(OUTER_LR)
  opt_state = optimizer.init(params)
  batch = _batch(key_data, meta_batch_size)
  step = _make_meta_step(formulation, optimizer)
  start = time.perf_counter()
  compiled = step.lower(params, opt_state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get('flops', float('nan')))
  params, opt_state, loss = compiled(params, opt_state, batch)  # warm-up
  first_step_loss = float(loss)  # same params and data for every formulation
  times, begin = [], time.perf_counter()
  for _ in range(num_steps):
    start = time.perf_counter()
    params, opt_state, loss = compiled(params, opt_state, batch)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - start)
    if len(times) >= 2 and time.perf_counter() - begin > max_seconds:
      break
  median_s = statistics.median(times)
  return {
      'compile_s': round(compile_s, 2),
      'median_step_s': round(median_s, 4),
      'meta_steps_per_s': round(1.0 / median_s, 3),
      'timed_steps': len(times),
      'xla_gflop_per_step': round(xla_flops / 1e9, 3),
      'gflop_per_s': round(xla_flops / 1e9 / median_s, 1),
      'first_step_loss': first_step_loss,
  }


def main(argv):
  del argv
  meta_batch_size = 4 if _QUICK.value else _META_BATCH_SIZE.value
  num_steps = 3 if _QUICK.value else _NUM_STEPS.value
  formulations = [f for f in _FORMULATIONS.value.split(',') if f]
  valid = ('patches', 'conv', 'conv_unrolled')
  for f in formulations:
    if f not in valid:
      raise ValueError(f'--formulations: unknown {f!r}; valid names are {valid}.')
  results = {
      'config': {'ways': WAYS, 'shots': SHOTS, 'queries_per_class': QUERIES,
                 'image': [IMAGE_SIZE, IMAGE_SIZE, CHANNELS], 'width': WIDTH,
                 'depth': DEPTH, 'meta_batch_size': meta_batch_size,
                 'inner_steps': 1, 'second_order': True, 'outer': 'adam'},
      'backend': jax.default_backend(),
      'auto_method': conv.resolve_method('auto'),
      'analytic_conv_gflop_per_step': round(analytic_flops(meta_batch_size) / 1e9, 3),
      'load_average_before': list(os.getloadavg()),
      'formulations': {},
  }
  for f in formulations:
    results['formulations'][f] = bench(f, meta_batch_size, num_steps,
                                       _MAX_SECONDS.value)
  results['load_average_after'] = list(os.getloadavg())
  print(json.dumps(results, indent=2))


if __name__ == '__main__':
  app.run(main)
