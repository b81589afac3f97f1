"""The jit-compiled meta-step: sample tasks, adapt each (vmapped), update the meta-parameters.

Everything that changes during meta-training lives in one ``MetaState`` pytree,
which is what makes checkpoint / resume a single serialisation. ``make_meta_step``
returns ``step(state) -> (state, metrics)``, one ``jax.jit`` with the state donated.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaprune_jax import types
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import l0_objective
from metaprune_jax.meta import guards
from metaprune_jax.meta import learners
from metaprune_jax.meta import maml
from metaprune_jax.meta import meta_pruner
from metaprune_jax.meta import sharding
from metaprune_jax.nets import masked

TaskSampler = Callable[[types.PRNGKey, int], types.TaskBatch]


class MetaState(NamedTuple):
  """Meta-training state.

  Attributes:
    meta_params: ``{'params': Params, 'gate_logits': GateLogits | None}``, plus
      any extra groups of the learner (Meta-SGD: ``'inner_lrs'``).
    opt_state: outer optimiser state.
    multiplier: Lagrange multiplier of the sparsity constraint (scalar).
    step: number of meta-steps taken (int32 scalar).
    key: PRNG key for the next step.
    masks: fixed (not learned) mask tree mirroring the params, or None. Pruned
      weights are zeroed after every outer update, so they stay exactly zero.
  """
  meta_params: dict
  opt_state: optax.OptState
  multiplier: jax.Array
  step: jax.Array
  key: types.PRNGKey
  masks: types.Masks | None = None


class ScaleByGroupState(NamedTuple):
  """Number of updates taken (drives learning-rate schedules)."""
  count: jax.Array


def scale_by_group(group_lrs: dict[str, float | optax.Schedule]) -> optax.GradientTransformation:
  """Multiplies ``updates[name]`` by ``-group_lrs[name]`` (a learning rate per top-level group).

  A group's learning rate is a float or an ``optax`` schedule of the update
  count. Cheaper than ``optax.multi_transform`` with one Adam per group: the
  Adam statistics are shared code, only the final scaling differs.
  """
  def init_fn(params):
    del params
    return ScaleByGroupState(count=jnp.zeros((), jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    scaled = {}
    for name, tree in updates.items():
      lr = group_lrs[name](state.count) if callable(group_lrs[name]) else group_lrs[name]
      scaled[name] = jax.tree.map(lambda u, lr=lr: -lr * u, tree)
    return scaled, ScaleByGroupState(optax.safe_increment(state.count))
  return optax.GradientTransformation(init_fn, update_fn)


def make_outer_optimizer(outer_lr: float | optax.Schedule, gate_lr: float | optax.Schedule | None = None,
                         grad_clip_norm: float | None = None,
                         inner_lrs_lr: float | optax.Schedule | None = None,
                         meta_pruner_lr: float | optax.Schedule | None = None) -> optax.GradientTransformation:
  """Adam on the weights (``outer_lr``), the gate logits (``gate_lr``) and Meta-SGD's
  inner learning rates (``inner_lrs_lr``); the last two default to ``outer_lr``.
  The meta-pruner's parameters (``'meta_pruner'``) train at ``meta_pruner_lr``
  (default ``gate_lr``).

  Any learning rate may be an ``optax`` schedule of the meta-step.
  """
  chain = [optax.scale_by_adam(),
           scale_by_group({'params': outer_lr, 'gate_logits': outer_lr if gate_lr is None else gate_lr,
                           'meta_pruner': (outer_lr if gate_lr is None else gate_lr) if meta_pruner_lr is None
                                          else meta_pruner_lr,
                           'inner_lrs': outer_lr if inner_lrs_lr is None else inner_lrs_lr})]
  if grad_clip_norm:
    chain.insert(0, optax.clip_by_global_norm(grad_clip_norm))
  return optax.chain(*chain)


def init_meta_state(key: types.PRNGKey, params: types.Params, gate_logits: types.GateLogits | None,
                    optimizer: optax.GradientTransformation, init_multiplier: float = 0.0,
                    masks: types.Masks | None = None, extra: dict | None = None) -> MetaState:
  """A fresh state; with ``masks`` the pruned weights are zeroed from the start.

  ``extra``: further meta-parameter groups of the learner (``Learner.init_extra``).
  """
  meta_params = {'params': masked.apply_masks(params, masks), 'gate_logits': gate_logits, **(extra or {})}
  return MetaState(meta_params=meta_params, opt_state=optimizer.init(meta_params),
                   multiplier=jnp.asarray(init_multiplier, jnp.float32),
                   step=jnp.zeros((), jnp.int32), key=key, masks=masks)


def meta_params_gated(meta_params) -> bool:
  return meta_params.get('gate_logits') is not None


def sparsity_metrics(params, gate_logits, hc: hard_concrete.HardConcrete) -> dict[str, jax.Array]:
  """Expected and realised sparsity (zeros when nothing is gated)."""
  if gate_logits is None:
    zero = jnp.zeros((), jnp.float32)
    return {'mask/expected_sparsity': zero, 'mask/realised_sparsity': zero}
  return {'mask/expected_sparsity': 1.0 - hard_concrete.expected_density(params, gate_logits, hc),
          'mask/realised_sparsity': hard_concrete.realised_sparsity(params, gate_logits, hc)}


def make_meta_step(task_sampler: TaskSampler, loss_fn: maml.LossFn, optimizer: optax.GradientTransformation,
                   *, meta_batch_size: int, settings: maml.InnerSettings,
                   objective: l0_objective.L0Objective = l0_objective.L0Objective(),
                   harden_step: int | None = None,
                   donate: bool = True, nonfinite: str = 'stop',
                   mesh: jax.sharding.Mesh | None = None,
                   learner: learners.Learner | None = None,
                   gate_density: Callable | None = None,
                   steps_per_call: int = 1) -> Callable[[MetaState], tuple[MetaState, types.Metrics]]:
  """Builds the jitted ``step(state) -> (state, metrics)``.

  Inside one ``jax.jit``: split the key, sample ``meta_batch_size`` tasks on
  device, adapt each task (``vmap``; inner loop is a ``lax.scan``), average the
  query losses (``learner.batch_loss``; default MAML on ``loss_fn``), add the sparsity term, take one optimiser step, and one dual step
  on the multiplier.

  ``harden_step`` (prune -> fine-tune): at that meta-step the gates are hardened
  to exactly ``objective.target_sparsity`` (``hard_concrete.harden``: the
  lowest-``log_alpha`` gates closed, the rest saturated open) and frozen; the
  remaining steps meta-train the weights under that fixed mask. The switch is a
  ``lax.cond`` on ``state.step``, so it costs no retrace and survives resume.

  ``gate_density(meta_params, tasks)`` (task-conditioned gates, from
  ``meta_pruner.conditioned_learner``): the expected density the L0 term
  constrains, averaged over the batch's own per-task gates. Then hardening is
  per task (the learner hardens each task's gates once ``meta_pruner.HARDENED``
  is set) and the shared logits and the ``'meta_pruner'`` group freeze together.

  Metrics: ``outer/objective``, ``outer/query_loss``, ``mask/expected_sparsity``
  (of the gates this step used) and ``mask/multiplier``. Realised sparsity needs
  a pass over every gate and is off the hot path: ``sparsity_metrics`` computes it
  when a log line is due. ``outer/nonfinite`` is 1.0 when the loss or a gradient
  was non-finite; with ``nonfinite='skip'`` that step's update is dropped
  (``guards.keep_finite_update``), with ``'stop'`` the caller stops the run.

  ``mesh`` (``sharding.make_mesh``): the sampled tasks are sharded along the
  mesh's task axis and the state is replicated, inside this same jit.

  ``steps_per_call=K > 1``: the jitted function runs K meta-steps in a
  ``lax.scan`` (the same step K times, the same numbers as K calls) and returns
  the metrics stacked, each ``[K]``. One dispatch then serves K steps, which
  matters when a step takes well under a millisecond (the sinusoid MLP on CPU;
  ``benchmarks/meta_step_speed.py``).
  """
  if int(steps_per_call) < 1:
    raise ValueError(f'steps_per_call must be a positive integer, got {steps_per_call!r}.')
  if nonfinite not in guards.NONFINITE_MODES:
    raise ValueError(f'nonfinite={nonfinite!r} is invalid: use one of {guards.NONFINITE_MODES}.')
  if learner is None:
    learner = learners.get_learner('maml', loss_fn=loss_fn)

  frozen_groups = ('gate_logits', 'meta_pruner')

  def objective_fn(meta_params, multiplier, tasks, key, step, fixed_masks):
    if gate_density is not None and harden_step is not None:  # One branch runs: hardening is an argsort.
      query_loss = jax.lax.cond(
          step >= harden_step,
          lambda mp: learner.batch_loss({**mp, meta_pruner.HARDENED: True}, tasks, key, settings=settings,
                                        gate_mode='sample', fixed_masks=fixed_masks),
          lambda mp: learner.batch_loss(mp, tasks, key, settings=settings, gate_mode='sample',
                                        fixed_masks=fixed_masks), meta_params)
    else:
      query_loss = learner.batch_loss(meta_params, tasks, key, settings=settings,
                                      gate_mode='sample', fixed_masks=fixed_masks)
    gate_logits = meta_params.get('gate_logits')
    if gate_logits is None:
      return query_loss, (query_loss, jnp.ones((), jnp.float32))  # Dense: density 1.
    if gate_density is None:
      density = hard_concrete.expected_density(meta_params['params'], gate_logits, settings.hc)
    elif harden_step is not None:  # Hardened per-task gates keep exactly the target: a constant.
      density = jax.lax.cond(step >= harden_step,
                             lambda mp: jnp.asarray(1.0 - objective.target_sparsity, jnp.float32),
                             lambda mp: gate_density(mp, tasks), meta_params)
    else:
      density = gate_density(meta_params, tasks)
    total = l0_objective.outer_objective(query_loss, density, multiplier, objective, step)
    return total, (query_loss, density)

  def harden_if_due(meta_params, step):
    if harden_step is None or meta_params.get('gate_logits') is None or gate_density is not None:
      return meta_params
    return jax.lax.cond(
        step == harden_step,
        lambda mp: {**mp, 'gate_logits': hard_concrete.harden(mp['params'], mp['gate_logits'],
                                                               objective.target_sparsity)},
        lambda mp: mp, meta_params)

  def step(state: MetaState):
    state = state._replace(meta_params=harden_if_due(state.meta_params, state.step))
    key, task_key, gate_key = jax.random.split(state.key, 3)
    tasks = task_sampler(task_key, meta_batch_size)
    if mesh is not None:
      tasks = sharding.shard_tasks(tasks, mesh)
    (total, (query_loss, density)), grads = jax.value_and_grad(objective_fn, has_aux=True)(
        state.meta_params, state.multiplier, tasks, gate_key, state.step, state.masks)
    frozen = harden_step is not None and meta_params_gated(state.meta_params)
    if frozen:  # After hardening the mask is fixed: no gradient reaches the gates.
      after = state.step >= harden_step
      grads = {**grads, **{name: jax.tree.map(lambda g: jnp.where(after, 0.0, g), grads[name])
                           for name in frozen_groups if name in grads}}
    updates, opt_state = optimizer.update(grads, state.opt_state, state.meta_params)
    if frozen:  # Adam's momentum must not move frozen gates either.
      updates = {**updates, **{name: jax.tree.map(lambda u: jnp.where(after, 0.0, u), updates[name])
                               for name in frozen_groups if name in updates}}
    meta_params = optax.apply_updates(state.meta_params, updates)
    if state.masks is not None:  # Momentum from before pruning must not revive a pruned weight.
      meta_params = {**meta_params, 'params': masked.apply_masks(meta_params['params'], state.masks)}
    multiplier = state.multiplier
    if meta_params.get('gate_logits') is not None:
      multiplier = l0_objective.update_multiplier(multiplier, query_loss, density, objective, state.step)
      if frozen:
        multiplier = jnp.where(after, state.multiplier, multiplier)
    metrics = {'outer/objective': total, 'outer/query_loss': query_loss,
               'mask/expected_sparsity': 1.0 - density, 'mask/multiplier': multiplier}
    new_state = MetaState(meta_params, opt_state, multiplier, state.step + 1, key, state.masks)
    ok = guards.all_finite(total, grads)
    metrics['outer/nonfinite'] = 1.0 - ok.astype(jnp.float32)
    if nonfinite == 'skip':
      new_state = guards.keep_finite_update(ok, new_state, state)
    return new_state, metrics

  jit_kwargs = dict(donate_argnums=(0,) if donate else (), **sharding.jit_shardings(mesh))
  if steps_per_call == 1:
    return jax.jit(step, **jit_kwargs)

  def steps(state: MetaState):
    return jax.lax.scan(lambda carry, _: step(carry), state, None, length=int(steps_per_call))
  return jax.jit(steps, **jit_kwargs)
