"""One task's inner loop with gates and fixed masks, and the mean of a loss over a task batch.

Meta-parameters are a dict ``{'params': Params, 'gate_logits': GateLogits | None,
*extra}``. For each task the gates are drawn once (independent noise per task)
and held fixed through the inner loop; the inner loop updates the weights (and,
with ``adapt_gates``, the gate logits too: task-specific pruning).

Gate modes (``settings.GATE_MODES``): ``'sample'`` (training: reparameterised
noise), ``'deterministic'`` (evaluation: exact 0/1 gates) and ``'off'`` (the
dense counterpart: no gates).

``fixed_masks`` (a mask tree, e.g. from magnitude pruning) are not learned: they
multiply the weights in every inner and outer forward pass, in every gate mode,
so a pruned weight gets zero gradient and never comes back.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from metaprune_jax import types
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import masking
from metaprune_jax.masks import noise as noise_lib
from metaprune_jax.meta import inner
from metaprune_jax.meta.settings import Execution
from metaprune_jax.meta.settings import GATE_MODES
from metaprune_jax.meta.settings import InnerSettings
from metaprune_jax.meta.settings import check_execution

LossFn = Callable[[types.Params, jax.Array, jax.Array], jax.Array]


def check_gate_mode(gate_mode: str) -> None:
  if gate_mode not in GATE_MODES:
    raise ValueError(f'gate_mode={gate_mode!r} is unknown; use one of {GATE_MODES}.')


def batch_gate_noise(meta_params, key: types.PRNGKey, execution: Execution, num_tasks: int, gate_mode: str):
  """Gate noise for a meta-batch and its ``vmap`` axis: ``(noise, 0)`` per task, ``(noise, None)`` shared.

  Returns ``(None, None)`` when nothing is sampled (no gates, or fixed gates).
  Noise leaves are ``[num_tasks, *gate_shape]`` per task, ``gate_shape`` shared.
  """
  if gate_mode != 'sample' or meta_params.get('gate_logits') is None:
    return None, None
  if execution.gate_sample_scope == 'batch':
    return noise_lib.uniform_tree(meta_params['gate_logits'], key, method=execution.noise), None
  return noise_lib.uniform_tree(meta_params['gate_logits'], key, method=execution.noise, num_tasks=num_tasks), 0


def gate_masks(gate_logits, noise, gate_mode: str, hc: hard_concrete.HardConcrete):
  """The gates a forward pass multiplies in: sampled from ``noise``, deterministic, or None (``'off'``)."""
  if gate_logits is None or gate_mode == 'off':
    return None
  if gate_mode == 'deterministic':
    return hard_concrete.deterministic_gates(gate_logits, hc)
  return jax.tree.map(lambda la, u: hard_concrete.gates_from_noise(la, u, hc), gate_logits, noise)


def masked_params(meta_params, noise, gate_mode: str, hc: hard_concrete.HardConcrete, fixed_masks=None):
  """The parameters a forward pass runs with: fixed masks, then gates (no adaptation)."""
  check_gate_mode(gate_mode)
  params = masking.apply_masks(meta_params['params'], fixed_masks)
  return masking.apply_masks(params, gate_masks(meta_params.get('gate_logits'), noise, gate_mode, hc))


def adapt_task(meta_params, task: types.TaskBatch, noise, loss_fn: LossFn, settings: InnerSettings,
               execution: Execution, gate_mode: str, trace: Callable | None, fixed_masks=None,
               adapt_keys=None, weight_space: bool = True):
  """Adapts on the support set.

  With fixed gates (no ``adapt_gates``) the inner loop runs on the masked
  weights ``w = params * m`` directly: an SGD step on ``params`` moves ``w`` by
  ``-inner_lr * m**2 * grad_w``, so adapting ``w`` with the per-weight step size
  ``inner_lr * m**2`` is the same computation with the mask applied once per
  task instead of inside every loss evaluation. In first order the inner
  gradient ``m * grad_w`` is a constant, so one factor of ``m`` is stopped.

  Args:
    meta_params: ``{'params', 'gate_logits' (or None)[, 'inner_lrs']}``;
      ``'inner_lrs'`` (Meta-SGD) is a tree of per-parameter inner learning rates
      mirroring ``params`` that replaces ``settings.inner_lr``.
    task: one task (no task axis).
    noise: this task's gate noise (``'sample'`` mode) or None.
    loss_fn: ``(params, inputs, targets) -> scalar``.
    settings: inner-loop settings.
    execution: ``python_loop`` is read here.
    gate_mode: one of ``GATE_MODES``.
    trace: optional ``effective_params -> value`` recorded before and after
      every inner step (e.g. the query loss).
    fixed_masks: optional fixed mask tree mirroring the params.
    adapt_keys: top-level parameter names adapted in the inner loop (ANIL: the
      head); None adapts every parameter. The others stay at their meta-values
      (still differentiable: the outer gradient reaches them).
    weight_space: adapt the masked weights (above); False adapts the raw
      parameters under the mask (Reptile's outer direction is
      ``params - adapted params``).

  Returns:
    ``(adapted fast weights[, trace]), effective`` where ``effective(fast)`` gives
    the masked parameters the network runs with.
  """
  check_gate_mode(gate_mode)
  params, gate_logits = meta_params['params'], meta_params.get('gate_logits')
  adapt_gates = settings.adapt_gates and gate_logits is not None and gate_mode != 'off'
  inner_lrs = meta_params.get('inner_lrs')
  select = (lambda tree: tree) if adapt_keys is None else (lambda tree: {k: tree[k] for k in adapt_keys})
  if inner_lrs is not None:
    inner_lrs = select(inner_lrs)

  if adapt_gates or not weight_space:
    def effective(fast):
      p, logits = fast if adapt_gates else (fast, gate_logits)
      p = masking.apply_masks({**params, **p}, fixed_masks)
      return masking.apply_masks(p, gate_masks(logits, noise, gate_mode, settings.hc))
    weights = select(params)
    weight_lr = jax.tree.map(lambda _: settings.inner_lr, weights) if inner_lrs is None else inner_lrs
    fast, lr = weights, weight_lr
    if adapt_gates:
      fast, lr = (weights, gate_logits), (weight_lr, jax.tree.map(lambda _: settings.inner_gate_lr, gate_logits))
  else:
    masks = masking.combine_masks(fixed_masks, gate_masks(gate_logits, noise, gate_mode, settings.hc))
    start = masking.apply_masks(params, masks)
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
                       python_loop=execution.python_loop)
  return result, effective


def mean_over_tasks(task_loss: Callable, meta_params, tasks: types.TaskBatch, key: types.PRNGKey, *,
                    execution: Execution, gate_mode: str = 'sample') -> jax.Array:
  """Mean of ``task_loss(meta_params, task, noise)`` over a task batch: the one batching path of every learner.

  Gate noise is drawn for the whole batch at once (``batch_gate_noise``: per task,
  or shared when ``execution.gate_sample_scope='batch'``), then the tasks are
  ``vmap``ped; with ``0 < execution.task_chunk_size < num_tasks`` a ``lax.map``
  runs over chunks of that many vmapped tasks (less memory, same mean).

  Args:
    task_loss: ``(meta_params, task, noise) -> scalar`` for one task (no task axis).
    meta_params: ``{'params': ..., 'gate_logits': ... or None, ...}``.
    tasks: ``TaskBatch`` with a leading task axis ``[num_tasks, ...]``.
    key: gate-noise key (used in ``'sample'`` mode).
    execution: noise generator, sample scope, chunk size.
    gate_mode: one of ``GATE_MODES``.

  Raises:
    ValueError: if the chunk size does not divide the number of tasks.
  """
  check_execution(execution)
  num_tasks, chunk = tasks.support_inputs.shape[0], execution.task_chunk_size
  noise, noise_axis = batch_gate_noise(meta_params, key, execution, num_tasks, gate_mode)
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
