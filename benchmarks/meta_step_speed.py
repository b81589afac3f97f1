"""Meta-steps per second on the paper's sinusoid configuration; prints JSON.

2x40 ReLU MLP, meta-batch 25, K=10 support + 10 query, 1 inner step, second order,
Adam outer update; task sampling inside the jitted step. Variants measured in the
same process: the library's dense step, its gated step (per-weight hard-concrete
gates, a sample per task), both again with the inner loop unrolled in Python
(``python_loop``), the gated step with one gate sample per meta-step shared by
its tasks (``library_gated_batch_sample``, ``gate_sample_scope='batch'``), and a
minimal hand-written jit+vmap MAML for reference (dense, with ``@`` or with the library's
``nets.matmul``; with per-task gates as ``hand_written_gated_K_per_call``; and with random
per-task 0/1 masks and nothing learned as ``hand_written_per_task_masks_floor_K_per_call``:
the work any per-task gate sample adds, a floor for the gated step's ratio). Each variant:
compile (first call) timed separately, then ``--repeats`` rounds in which every
variant runs ``--steps`` calls (round-robin, so a change in machine load hits
all variants alike), ``block_until_ready`` at the end of each; medians reported.

``*_K_per_call`` variants run K meta-steps per jitted call (``lax.scan``;
``compile_step(step, steps_per_call=K)``, ``--config.run.steps_per_call`` in the
launcher), the hand-written reference likewise, so per-call dispatch is paid
once per K steps by both.

Usage: python -m benchmarks.meta_step_speed [--steps=2000 --repeats=7 --first_order --steps_per_call=10]
"""

import itertools
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from absl import app
from absl import flags

from metaprune_jax import losses
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import noise
from metaprune_jax.meta import gate_source
from metaprune_jax.meta import maml
from metaprune_jax.meta import optimizer as outer_optimizer
from metaprune_jax.meta import settings as settings_lib
from metaprune_jax.meta import step as meta_step
from metaprune_jax.nets import matmul
from metaprune_jax.nets import mlp
from metaprune_jax.tasks import sinusoid

_STEPS = flags.DEFINE_integer('steps', 2000, 'Meta-steps per timing.')
_REPEATS = flags.DEFINE_integer('repeats', 7, 'Timings per variant (median reported).')
_FIRST_ORDER = flags.DEFINE_boolean('first_order', False, 'First-order MAML instead of second order.')
_STEPS_PER_CALL = flags.DEFINE_integer('steps_per_call', 10, 'K of the *_per_call variants (K meta-steps per call).')
_GRANULARITY = flags.DEFINE_string('granularity', 'weight', 'Gate granularity of the gated variant.')

META_BATCH, SHOTS, INNER_LR = 25, 10, 0.01


def _compile(step, state):
  t0 = time.perf_counter()
  state, out = step(state)
  jax.block_until_ready(out)
  return state, time.perf_counter() - t0


def _time_interleaved(variants: dict, steps: int, repeats: int, per_call: dict | None = None) -> dict:
  """Compiles every variant, then times them round-robin so load drifts hit all alike.

  ``per_call[name] = K``: that variant's step runs K meta-steps per call, so it
  is called ``steps / K`` times per timing; rates are always meta-steps/s.
  """
  per_call = per_call or {}
  states, compile_seconds, rates = {}, {}, {name: [] for name in variants}
  for name, (step, state) in variants.items():
    states[name], compile_seconds[name] = _compile(step, state)
  for _ in range(repeats):
    for name, (step, _) in variants.items():
      state = states[name]
      t0 = time.perf_counter()
      for _ in range(steps // per_call.get(name, 1)):
        state, out = step(state)
      jax.block_until_ready((state, out))
      rates[name].append(steps / (time.perf_counter() - t0))
      states[name] = state
  return {name: {'compile_seconds': round(compile_seconds[name], 3),
                 'steps_per_sec_median': round(statistics.median(rates[name]), 1),
                 'steps_per_sec_all': [round(r, 1) for r in rates[name]],
                 'ms_per_step_median': round(1e3 / statistics.median(rates[name]), 4)} for name in variants}


def _library(gated: bool, first_order: bool, granularity: str, python_loop: bool = False, scope: str = 'task',
             steps_per_call: int = 1):
  model = mlp.make_mlp((40, 40), 1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']
  gates = hard_concrete.init_gate_logits(params, granularity) if gated else None
  optimizer = outer_optimizer.outer_optimizer({'params': 1e-3, 'gate_logits': 1e-2})
  state = meta_step.init_meta_state(jax.random.key(1), params, gates, optimizer)
  sampler = lambda key, n: sinusoid.sample_sinusoid_tasks(key, num_tasks=n, num_support=SHOTS, num_query=SHOTS)
  learner = maml.maml(losses.mse_loss(model.apply),
                      execution=settings_lib.Execution(python_loop=python_loop, gate_sample_scope=scope))
  step = meta_step.make_meta_step(sampler, learner, optimizer, meta_batch_size=META_BATCH,
                                  settings=settings_lib.InnerSettings(inner_lr=INNER_LR, first_order=first_order),
                                  gates=gate_source.shared_gates() if gated else gate_source.no_gates())
  return meta_step.compile_step(step, steps_per_call=steps_per_call), state


def _plain_mlp(layout_matmul: bool = False):
  """The hand-written references' 2x40 ReLU MLP as a plain dict, and its MSE ``loss(p, x, y)``.

  ``layout_matmul``: the layers multiply with ``nets.matmul.matmul`` (as the library's MLP does) instead of ``@``.
  """
  mm = matmul.matmul if layout_matmul else jnp.matmul
  keys = jax.random.split(jax.random.key(0), 3)
  params = {'w0': jax.random.normal(keys[0], (1, 40)), 'b0': jnp.zeros(40),
            'w1': jax.random.normal(keys[1], (40, 40)) / 40 ** 0.5, 'b1': jnp.zeros(40),
            'w2': jax.random.normal(keys[2], (40, 1)) / 40 ** 0.5, 'b2': jnp.zeros(1)}

  def net(p, x):
    x = jax.nn.relu(mm(x, p['w0']) + p['b0'])
    x = jax.nn.relu(mm(x, p['w1']) + p['b1'])
    return mm(x, p['w2']) + p['b2']

  def loss(p, x, y):
    return jnp.mean((net(p, x) - y) ** 2)

  return params, loss


def _hand_written(first_order: bool, steps_per_call: int = 1, layout_matmul: bool = False):
  """The smallest honest jit+vmap MAML: plain dict MLP, one inner step, Adam."""
  params, loss = _plain_mlp(layout_matmul)

  def task_loss(p, xs, ys, xq, yq):
    g = jax.grad(loss)(p, xs, ys)
    if first_order:
      g = jax.lax.stop_gradient(g)
    return loss(jax.tree.map(lambda a, b: a - INNER_LR * b, p, g), xq, yq)

  return plain_maml_step(task_loss, params, steps_per_call)


def _masked_maml_loss(loss, params, flat_mask, gated, first_order, xs, ys, xq, yq):
  """One task's query loss after an inner SGD step, the ``gated`` kernels multiplied by slices of ``flat_mask``."""
  sizes = [params[name].size for name in gated]
  z = dict(zip(gated, (m.reshape(params[n].shape)
                       for n, m in zip(gated, jnp.split(flat_mask, list(itertools.accumulate(sizes))[:-1])))))
  masked = lambda p: {n: v * z[n] if n in z else v for n, v in p.items()}  # pylint: disable=unnecessary-lambda-assignment
  g = jax.grad(lambda p: loss(masked(p), xs, ys))(params)
  if first_order:
    g = jax.lax.stop_gradient(g)
  return loss(masked(jax.tree.map(lambda a, b: a - INNER_LR * b, params, g)), xq, yq)


def _hand_written_gated(first_order: bool, steps_per_call: int = 1):
  """The same hand-written MAML with per-weight hard-concrete gates, a sample per task, kept minimal.

  All gate logits are one flat vector (one gate computation, one Adam update);
  noise is the library's keyed hash (``masks.noise``), the gate formula
  ``hard_concrete.gates_from_noise``; the L0 term is a fixed penalty. What a
  careful user would write: the floor for the library's gated step.
  """
  params, loss = _plain_mlp()
  gated = ('w0', 'w1', 'w2')
  sizes = [params[name].size for name in gated]
  hc = hard_concrete.HardConcrete()

  def task_loss(meta, u, xs, ys, xq, yq):
    flat = hard_concrete.gates_from_noise(meta['gates'], u, hc)
    return _masked_maml_loss(loss, meta['params'], flat, gated, first_order, xs, ys, xq, yq)

  meta = {'params': params, 'gates': jnp.full((sum(sizes),), 3.0, jnp.float32)}
  penalty = lambda meta: 1e-4 * jnp.sum(hard_concrete.prob_nonzero(meta['gates'], hc))  # pylint: disable=unnecessary-lambda-assignment
  return plain_maml_step(task_loss, meta, steps_per_call, noise_size=sum(sizes), penalty=penalty)


def _per_task_masks_floor(first_order: bool, steps_per_call: int = 1):
  """The cost of a mask per task alone: the hand-written step with random per-task 0/1 masks, nothing learned.

  Every task multiplies the three kernels by its own mask (``u > 0.1`` from the
  same hash noise as the gates), so its support pass runs on its own weights as
  a gated step's does, but there are no gate logits, no gate gradient and no L0
  term; the layers use ``nets.matmul`` like the library's MLP. Any step that
  samples a mask per task does at least this work, so its time over the dense
  step is a floor for the gated step's ratio on this machine.
  """
  params, loss = _plain_mlp(layout_matmul=True)
  gated = ('w0', 'w1', 'w2')
  sizes = [params[name].size for name in gated]

  def task_loss(p, u, xs, ys, xq, yq):
    return _masked_maml_loss(loss, p, (u > 0.1).astype(jnp.float32), gated, first_order, xs, ys, xq, yq)

  return plain_maml_step(task_loss, params, steps_per_call, noise_size=sum(sizes))


def plain_maml_step(task_loss, params, steps_per_call: int = 1, *, noise_size: int = 0, penalty=None):
  """A jitted Adam meta-step with tasks sampled inside; and its state.

  ``task_loss(p, xs, ys, xq, yq)``; with ``noise_size > 0``, ``task_loss(p, u, xs, ys, xq, yq)`` gets its own
  ``[noise_size]`` row of hash-uniform noise (one draw per meta-step). ``penalty(p)`` is added to the mean
  query loss.
  """
  optimizer = optax.adam(1e-3)

  def step(state):
    p, opt_state, key = state
    key, task_key, noise_key = jax.random.split(key, 3)
    t = sinusoid.sample_sinusoid_tasks(task_key, num_tasks=META_BATCH, num_support=SHOTS, num_query=SHOTS)
    if noise_size:
      t = (noise.uniform(noise_key, (META_BATCH, noise_size)),) + tuple(t)

    def objective(p):
      query = jnp.mean(jax.vmap(task_loss, in_axes=(None,) + (0,) * len(t))(p, *t))
      return query if penalty is None else query + penalty(p)

    value, grads = jax.value_and_grad(objective)(p)
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state, key), value

  state = (params, optimizer.init(params), jax.random.key(1))
  if steps_per_call == 1:
    return jax.jit(step, donate_argnums=0), state
  return jax.jit(lambda s: jax.lax.scan(lambda c, _: step(c), s, None, length=steps_per_call),
                 donate_argnums=0), state


def main(argv):
  del argv
  steps, repeats, first_order, k = _STEPS.value, _REPEATS.value, _FIRST_ORDER.value, _STEPS_PER_CALL.value
  if steps % k:
    raise ValueError(f'--steps={steps} must be a multiple of --steps_per_call={k}.')
  per_call = {  # name -> (step, state); each call runs k meta-steps
      f'hand_written_reference_{k}_per_call': _hand_written(first_order, k),
      f'hand_written_gated_{k}_per_call': _hand_written_gated(first_order, k),
      f'hand_written_layout_matmul_{k}_per_call': _hand_written(first_order, k, layout_matmul=True),
      f'hand_written_per_task_masks_floor_{k}_per_call': _per_task_masks_floor(first_order, k),
      f'library_dense_python_loop_{k}_per_call': _library(False, first_order, _GRANULARITY.value, python_loop=True,
                                                           steps_per_call=k),
      f'library_gated_{k}_per_call': _library(True, first_order, _GRANULARITY.value, steps_per_call=k),
      f'library_gated_python_loop_{k}_per_call': _library(True, first_order, _GRANULARITY.value, python_loop=True,
                                                           steps_per_call=k),
  }
  results = _time_interleaved({
      'hand_written_reference': _hand_written(first_order),
      'library_dense': _library(False, first_order, _GRANULARITY.value),
      'library_gated': _library(True, first_order, _GRANULARITY.value),
      'library_dense_python_loop': _library(False, first_order, _GRANULARITY.value, python_loop=True),
      'library_gated_python_loop': _library(True, first_order, _GRANULARITY.value, python_loop=True),
      'library_gated_batch_sample': _library(True, first_order, _GRANULARITY.value, scope='batch'),
      **per_call,
  }, steps, repeats, per_call={name: k for name in per_call})
  # Time of one variant over another's (rate of the second / rate of the first). The headline ratio compares the
  # launcher's sinusoid default: inner step unrolled in Python, K steps per call, for dense and gated alike.
  ratios = {  # name: (slower variant, reference variant)
      f'gated_over_dense_time_{k}_per_call': (f'library_gated_python_loop_{k}_per_call',
                                              f'library_dense_python_loop_{k}_per_call'),
      f'gated_scan_over_dense_time_{k}_per_call': (f'library_gated_{k}_per_call',
                                                   f'library_dense_python_loop_{k}_per_call'),
      f'hand_written_gated_over_reference_time_{k}_per_call': (f'hand_written_gated_{k}_per_call',
                                                               f'hand_written_reference_{k}_per_call'),
      # Random per-task masks, nothing learned: what any per-task sample costs over a dense step.
      f'per_task_masks_floor_over_dense_time_{k}_per_call': (f'hand_written_per_task_masks_floor_{k}_per_call',
                                                             f'library_dense_python_loop_{k}_per_call'),
      f'per_task_masks_floor_over_layout_reference_time_{k}_per_call': (
          f'hand_written_per_task_masks_floor_{k}_per_call', f'hand_written_layout_matmul_{k}_per_call'),
      f'dense_over_reference_time_{k}_per_call': (f'library_dense_python_loop_{k}_per_call',
                                                  f'hand_written_reference_{k}_per_call'),
      'gated_batch_sample_over_dense_time': ('library_gated_batch_sample', 'library_dense'),
      'gated_over_dense_time': ('library_gated', 'library_dense'),
      'gated_over_dense_time_python_loop': ('library_gated_python_loop', 'library_dense_python_loop'),
      'dense_over_reference_time': ('library_dense', 'hand_written_reference'),
  }
  for name, (slower, reference) in ratios.items():
    results[name] = round(results[reference]['steps_per_sec_median'] / results[slower]['steps_per_sec_median'], 3)
  print(json.dumps({
      'benchmark': 'sinusoid_meta_step_speed',
      'config': {'hidden': [40, 40], 'meta_batch_size': META_BATCH, 'shots': SHOTS, 'inner_steps': 1,
                 'second_order': not first_order, 'gate_granularity': _GRANULARITY.value,
                 'steps_per_timing': steps, 'repeats': repeats, 'steps_per_call_variants': k},
      'load_average': list(os.getloadavg()),
      'machine': {'backend': jax.default_backend(), 'devices': [str(d) for d in jax.devices()],
                  'jax': jax.__version__, 'python': platform.python_version(), 'processor': platform.processor()},
      'results': results}, indent=2))


if __name__ == '__main__':
  app.run(main)
