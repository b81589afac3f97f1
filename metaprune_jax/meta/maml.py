"""MAML with hard-concrete gates: the per-task objective and its vmapped batch mean.

Meta-parameters are a dict ``{'params': Params, 'gate_logits': GateLogits | None}``.
For each task the gates are drawn once (independent noise per task) and held fixed
through the inner loop; the inner loop updates the weights (and, with
``adapt_gates``, the gate logits too: task-specific pruning). The query loss after
adaptation is the task's outer loss.

Gate modes: ``'sample'`` (training: reparameterised noise), ``'deterministic'``
(evaluation: exact 0/1 gates) and ``'off'`` (the dense counterpart: no gates).

``fixed_masks`` (a mask tree, e.g. from magnitude pruning) are not learned: they
multiply the weights in every inner and outer forward pass, in every gate mode,
so a pruned weight gets zero gradient and never comes back.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from metaprune_jax import types
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import noise as noise_lib
from metaprune_jax.meta import inner
from metaprune_jax.nets import masked

GATE_MODES = ('sample', 'deterministic', 'off')
LossFn = Callable[[types.Params, jax.Array, jax.Array], jax.Array]


class InnerSettings(NamedTuple):
  """Inner-loop settings shared by training and evaluation.

  Attributes:
    inner_lr: SGD step size on the weights.
    num_inner_steps: adaptation steps (static).
    first_order: FOMAML when True.
    adapt_gates: also adapt gate logits in the inner loop.
    inner_gate_lr: SGD step size on gate logits when ``adapt_gates``.
    hc: hard-concrete constants.
    noise: gate-noise generator, ``'hash'`` or ``'threefry'`` (see ``masks.noise``).
    python_loop: unroll the inner steps in Python instead of ``lax.scan``
      (faster on CPU for short horizons; see ``inner.adapt``).
    task_chunk_size: > 0: the meta-batch runs as a ``lax.map`` over chunks of
      this many vmapped tasks (smaller scratch buffers; ``learners.batch_mean``);
      0 vmaps the whole batch at once.
    gate_sample_scope: ``'task'`` (default): every task of a meta-batch draws its
      own gate sample; ``'batch'``: one sample per meta-step shared by all its
      tasks (one draw per minibatch, as in Louizos et al. 2018). ``'batch'``
      keeps the support pass on shared weights, which is much cheaper on
      XLA:CPU for small nets (``benchmarks/meta_step_speed.py``).
  """
  inner_lr: float = 0.01
  num_inner_steps: int = 1
  first_order: bool = False
  adapt_gates: bool = False
  inner_gate_lr: float = 0.1
  hc: hard_concrete.HardConcrete = hard_concrete.HardConcrete()
  noise: str = 'hash'
  python_loop: bool = False
  task_chunk_size: int = 0
  gate_sample_scope: str = 'task'


GATE_SAMPLE_SCOPES = ('task', 'batch')


def sample_gate_noise(gate_logits, key: types.PRNGKey, method: str = 'hash', num_tasks: int | None = None):
  """Uniform noise for every gate: leaves ``[num_tasks, *gate_shape]`` (see ``noise.uniform_tree``)."""
  return noise_lib.uniform_tree(gate_logits, key, method=method, num_tasks=num_tasks)


def batch_gate_noise(meta_params, key: types.PRNGKey, settings: InnerSettings, num_tasks: int, gate_mode: str):
  """Gate noise for a meta-batch and its ``vmap`` axis: ``(noise, 0)`` per task, ``(noise, None)`` shared.

  Returns ``(None, None)`` when nothing is sampled (no gates, or fixed gates).
  """
  if gate_mode != 'sample' or meta_params.get('gate_logits') is None:
    return None, None
  if settings.gate_sample_scope not in GATE_SAMPLE_SCOPES:
    raise ValueError(f'gate_sample_scope={settings.gate_sample_scope!r} is unknown; use one of {GATE_SAMPLE_SCOPES}.')
  if settings.gate_sample_scope == 'batch':
    return sample_gate_noise(meta_params['gate_logits'], key, settings.noise), None
  return sample_gate_noise(meta_params['gate_logits'], key, settings.noise, num_tasks=num_tasks), 0


def _masks(gate_logits, noise, gate_mode: str, hc):
  if gate_logits is None or gate_mode == 'off':
    return None
  if gate_mode == 'deterministic':
    return hard_concrete.deterministic_gates(gate_logits, hc)
  return jax.tree.map(lambda la, u: hard_concrete.gates_from_noise(la, u, hc), gate_logits, noise)


def _combined_masks(fixed_masks, gate_masks):
  """The product of two mask trees (either may be None; ``None`` leaves mean unmasked)."""
  if fixed_masks is None or gate_masks is None:
    return gate_masks if fixed_masks is None else fixed_masks
  return jax.tree.map(lambda f, g: g if f is None else (f if g is None else f * g), fixed_masks, gate_masks,
                      is_leaf=lambda x: x is None)


def masked_params(meta_params, noise, gate_mode: str, hc: hard_concrete.HardConcrete, fixed_masks=None):
  """The parameters a forward pass runs with: fixed masks, then gates (no adaptation)."""
  if gate_mode not in GATE_MODES:
    raise ValueError(f'gate_mode={gate_mode!r} is unknown; use one of {GATE_MODES}.')
  params = masked.apply_masks(meta_params['params'], fixed_masks)
  return masked.apply_masks(params, _masks(meta_params.get('gate_logits'), noise, gate_mode, hc))


def adapt_task(meta_params, task: types.TaskBatch, noise, loss_fn: LossFn, settings: InnerSettings,
               gate_mode: str, trace: Callable | None, fixed_masks=None, adapt_keys=None,
               weight_space: bool = True):
  """Adapts on the support set.

  With fixed gates (no ``adapt_gates``) the inner loop runs on the masked
  weights ``w = params * m`` directly: an SGD step on ``params`` moves ``w`` by
  ``-inner_lr * m**2 * grad_w``, so adapting ``w`` with the per-weight step size
  ``inner_lr * m**2`` is the same computation with the mask applied once per
  task instead of inside every loss evaluation (faster gated meta-steps,
  ``benchmarks/meta_step_speed.py``). In first order the inner gradient
  ``m * grad_w`` is a constant, so one factor of ``m`` is stopped.

  Args:
    trace: optional ``effective_params -> value`` recorded before and after
      every inner step (e.g. the query loss).
    adapt_keys: top-level parameter names adapted in the inner loop (ANIL: the
      head); None adapts every parameter. The others stay at their meta-values
      (still differentiable: the outer gradient reaches them).
    weight_space: adapt the masked weights (above); False adapts the raw
      parameters under the mask (Reptile needs them: its outer direction is
      ``params - adapted params``).

  ``meta_params['inner_lrs']``, when present (Meta-SGD), is a tree of per-parameter
  inner learning rates mirroring ``params``; it replaces ``settings.inner_lr``.

  Returns:
    ``(adapted fast weights[, trace]), effective`` where ``effective(fast)`` gives
    the masked parameters the network runs with.
  """
  if gate_mode not in GATE_MODES:
    raise ValueError(f'gate_mode={gate_mode!r} is unknown; use one of {GATE_MODES}.')
  params, gate_logits = meta_params['params'], meta_params.get('gate_logits')
  adapt_gates = settings.adapt_gates and gate_logits is not None and gate_mode != 'off'
  inner_lrs = meta_params.get('inner_lrs')
  select = (lambda tree: tree) if adapt_keys is None else (lambda tree: {k: tree[k] for k in adapt_keys})
  if inner_lrs is not None:
    inner_lrs = select(inner_lrs)

  if adapt_gates or not weight_space:
    def effective(fast):
      p, logits = fast if adapt_gates else (fast, gate_logits)
      p = masked.apply_masks({**params, **p}, fixed_masks)
      return masked.apply_masks(p, _masks(logits, noise, gate_mode, settings.hc))
    weights = select(params)
    weight_lr = jax.tree.map(lambda _: settings.inner_lr, weights) if inner_lrs is None else inner_lrs
    fast, lr = weights, weight_lr
    if adapt_gates:
      fast, lr = (weights, gate_logits), (weight_lr, jax.tree.map(lambda _: settings.inner_gate_lr, gate_logits))
  else:
    masks = _combined_masks(fixed_masks, _masks(gate_logits, noise, gate_mode, settings.hc))
    start = masked.apply_masks(params, masks)
    effective = lambda w: {**start, **w}  # pylint: disable=unnecessary-lambda-assignment
    fast = select(start)
    lr = settings.inner_lr if inner_lrs is None else inner_lrs
    if masks is not None:
      inner_m = jax.lax.stop_gradient if settings.first_order else (lambda m: m)
      lr = jax.tree.map(lambda p, r, m: r if m is None else r * m * inner_m(m), fast,
                        jax.tree.map(lambda _: lr, fast) if inner_lrs is None else lr, select(masks),
                        is_leaf=lambda x: x is None)

  def support_loss(fast):
    return loss_fn(effective(fast), task.support_inputs, task.support_targets)

  result = inner.adapt(support_loss, fast, inner_lr=lr, num_inner_steps=settings.num_inner_steps,
                       first_order=settings.first_order,
                       trace_fn=None if trace is None else (lambda f: trace(effective(f))),
                       python_loop=settings.python_loop)
  return result, effective


def task_query_loss(meta_params, task: types.TaskBatch, key: types.PRNGKey | None, *, loss_fn: LossFn,
                    settings: InnerSettings, gate_mode: str = 'sample', fixed_masks=None,
                    noise=None) -> jax.Array:
  """Query loss of one task after inner adaptation (a scalar).

  Args:
    meta_params: ``{'params': ..., 'gate_logits': ... or None}``.
    task: one task (no leading task axis), e.g. support inputs ``[shots, 1]``.
    key: this task's gate-noise key (used only for ``gate_mode='sample'`` when
      ``noise`` is None).
    loss_fn: ``(params, inputs, targets) -> scalar``.
    settings: inner-loop settings.
    gate_mode: one of ``GATE_MODES``.
    fixed_masks: optional fixed mask tree mirroring the params.
    noise: optional pre-drawn gate noise (``sample_gate_noise`` without task axis).
  """
  if gate_mode == 'sample' and noise is None and meta_params.get('gate_logits') is not None:
    noise = sample_gate_noise(meta_params['gate_logits'], key, settings.noise)
  adapted, effective = adapt_task(meta_params, task, noise, loss_fn, settings, gate_mode, None, fixed_masks)
  return loss_fn(effective(adapted), task.query_inputs, task.query_targets)


def query_loss_trace(meta_params, task: types.TaskBatch, *, loss_fn: LossFn, settings: InnerSettings,
                     gate_mode: str = 'deterministic', fixed_masks=None) -> jax.Array:
  """Query loss before and after every inner step: ``[num_inner_steps + 1]`` (evaluation)."""
  if gate_mode == 'sample':
    raise ValueError("query_loss_trace evaluates fixed gates: use gate_mode='deterministic' or 'off'.")
  (_, trace), _ = adapt_task(meta_params, task, None, loss_fn, settings, gate_mode,
                             lambda p: loss_fn(p, task.query_inputs, task.query_targets), fixed_masks)
  return trace


def mean_over_tasks(task_loss: Callable, meta_params, tasks: types.TaskBatch, key: types.PRNGKey, *,
                    settings: InnerSettings, gate_mode: str = 'sample') -> jax.Array:
  """Mean of ``task_loss(meta_params, task, noise)`` over a task batch: the one batching path of every learner.

  Gate noise is drawn for the whole batch at once (``batch_gate_noise``: per task,
  or shared when ``settings.gate_sample_scope='batch'``), then the tasks are
  ``vmap``ped; with ``0 < settings.task_chunk_size < num_tasks`` a ``lax.map``
  runs over chunks of that many vmapped tasks (less memory, same mean).

  Args:
    task_loss: ``(meta_params, task, noise) -> scalar`` for one task (no task axis).
    meta_params: ``{'params': ..., 'gate_logits': ... or None, ...}``.
    tasks: ``TaskBatch`` with a leading task axis ``[num_tasks, ...]``.
    key: gate-noise key (used in ``'sample'`` mode).
    settings: inner-loop settings (noise scheme, sample scope, chunk size).
    gate_mode: one of ``GATE_MODES``.

  Raises:
    ValueError: if the chunk size does not divide the number of tasks.
  """
  num_tasks, chunk = tasks.support_inputs.shape[0], settings.task_chunk_size
  noise, noise_axis = batch_gate_noise(meta_params, key, settings, num_tasks, gate_mode)
  per_task = jax.vmap(lambda task, task_noise: task_loss(meta_params, task, task_noise), in_axes=(0, noise_axis))
  if not 0 < chunk < num_tasks:
    return jnp.mean(per_task(tasks, noise))
  if num_tasks % chunk:
    raise ValueError(f'task_chunk_size={chunk} must divide the meta-batch size {num_tasks}.')
  split = lambda x: x.reshape((num_tasks // chunk, chunk) + x.shape[1:])  # pylint: disable=unnecessary-lambda-assignment
  if noise_axis is None:
    losses = lax.map(lambda chunk_tasks: per_task(chunk_tasks, noise), jax.tree.map(split, tasks))
  else:
    losses = lax.map(lambda args: per_task(*args), jax.tree.map(split, (tasks, noise)))
  return jnp.mean(losses)


def batch_query_loss(meta_params, tasks: types.TaskBatch, key: types.PRNGKey, *, loss_fn: LossFn,
                     settings: InnerSettings, gate_mode: str = 'sample', fixed_masks=None) -> jax.Array:
  """Mean MAML query loss over a task batch (``mean_over_tasks`` of ``task_query_loss``).

  In ``'sample'`` mode each task gets its own gate noise, drawn for the whole
  batch at once from ``key`` (or one draw for all, ``settings.gate_sample_scope='batch'``).
  """
  def task_loss(mp, task, noise):
    return task_query_loss(mp, task, None, loss_fn=loss_fn, settings=settings, gate_mode=gate_mode,
                           fixed_masks=fixed_masks, noise=noise)
  return mean_over_tasks(task_loss, meta_params, tasks, key, settings=settings, gate_mode=gate_mode)
