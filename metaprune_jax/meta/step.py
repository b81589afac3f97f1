"""The meta-step as a composition: sample tasks -> learner loss + sparsity term -> optax update.

Everything that changes during meta-training lives in one ``MetaState`` pytree,
which is what makes checkpoint / resume a single serialisation.
``make_meta_step`` returns a pure ``step(state) -> (state, metrics)``; the
wrappers below add what a run needs around it:

    step = make_meta_step(sampler, learner, optimizer, meta_batch_size=25, settings=settings,
                          gates=gate_source.shared_gates(hc, target_sparsity=0.9), objective=objective)
    step = skip_nonfinite(step)            # optional: drop non-finite updates
    step = over_seeds(step)                # optional: N independent seeds per step (a vmap)
    step = repeat_steps(step, 50)          # K meta-steps per call (a lax.scan)
    step = jit_step(step, mesh=mesh)       # one jax.jit, the state donated
"""

from collections.abc import Callable
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from metaprune_jax import types
from metaprune_jax.masks import l0_objective
from metaprune_jax.masks import masking
from metaprune_jax.meta import gate_source
from metaprune_jax.meta import guards
from metaprune_jax.meta import sharding
from metaprune_jax.meta.learner import Learner
from metaprune_jax.meta.settings import InnerSettings

TaskSampler = Callable[[types.PRNGKey, int], types.TaskBatch]
Step = Callable[['MetaState'], tuple['MetaState', types.Metrics]]


class MetaState(NamedTuple):
  """Meta-training state.

  Attributes:
    meta_params: ``{'params': Params, 'gate_logits': GateLogits | None}``, plus
      the gate source's and the learner's groups (``'meta_pruner'``, ``'inner_lrs'``).
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


def init_meta_state(key: types.PRNGKey, params: types.Params, gate_logits: types.GateLogits | None,
                    optimizer: optax.GradientTransformation, init_multiplier: float = 0.0,
                    masks: types.Masks | None = None, extra: dict | None = None) -> MetaState:
  """A fresh state; with ``masks`` the pruned weights are zeroed from the start.

  ``extra``: further meta-parameter groups (``Learner.init_extra``, the meta-pruner).
  """
  meta_params = {'params': masking.apply_masks(params, masks), 'gate_logits': gate_logits, **(extra or {})}
  return MetaState(meta_params=meta_params, opt_state=optimizer.init(meta_params),
                   multiplier=jnp.asarray(init_multiplier, jnp.float32),
                   step=jnp.zeros((), jnp.int32), key=key, masks=masks)


def meta_objective(learner: Learner, gates: gate_source.GateSource, objective: l0_objective.L0Objective,
                   settings: InnerSettings, harden_step: int | None) -> Callable:
  """``(meta_params, multiplier, tasks, key, step, fixed_masks) -> (total, (query_loss, density))``.

  The learner's mean query loss over the batch (gates sampled per task), plus the
  L0 term on the gate source's expected density. A source that hardens per task
  switches to its hardened learner at ``harden_step`` (a ``lax.cond``: one
  branch runs, no retrace).
  """
  def losses(hardened):
    bound = gates.bind(learner, hardened)
    def fn(meta_params, tasks, key, fixed_masks):
      query_loss = bound.batch_loss(meta_params, tasks, key, settings=settings, gate_mode='sample',
                                    fixed_masks=fixed_masks)
      if gates.expected_density is None:
        return query_loss, jnp.ones((), jnp.float32)
      return query_loss, gates.expected_density(meta_params, tasks, hardened)
    return fn

  switches = harden_step is not None and gates.hardens_per_task
  soft, hard = losses(False), (losses(True) if switches else None)

  def total(meta_params, multiplier, tasks, key, step, fixed_masks):
    args = (meta_params, tasks, key, fixed_masks)
    query_loss, density = jax.lax.cond(step >= harden_step, hard, soft, *args) if switches else soft(*args)
    if gates.expected_density is None:
      return query_loss, (query_loss, density)
    return l0_objective.outer_objective(query_loss, density, multiplier, objective, step), (query_loss, density)
  return total


def harden_at(gates: gate_source.GateSource, harden_step: int | None) -> Callable:
  """``(meta_params, step) -> meta_params``: the gate source's ``harden`` applied at ``harden_step``."""
  def fn(meta_params, step):
    if harden_step is None or gates.hardens_per_task or not gates.groups:
      return meta_params
    return jax.lax.cond(step == harden_step, gates.harden, lambda mp: mp, meta_params)
  return fn


def freeze(tree: dict, groups: tuple[str, ...], frozen: jax.Array | None) -> dict:
  """``tree`` with the leaves of ``groups`` set to zero where ``frozen`` (gradients, updates); None: unchanged."""
  if frozen is None:
    return tree
  return {**tree, **{name: jax.tree.map(lambda x: jnp.where(frozen, 0.0, x), tree[name])
                     for name in groups if name in tree}}


def dual_ascent(gates: gate_source.GateSource, objective: l0_objective.L0Objective) -> Callable:
  """``(multiplier, query_loss, density, step, frozen) -> multiplier``: one dual step, none for dense or frozen."""
  def fn(multiplier, query_loss, density, step, frozen):
    if gates.expected_density is None:
      return multiplier
    updated = l0_objective.update_multiplier(multiplier, query_loss, density, objective, step)
    return updated if frozen is None else jnp.where(frozen, multiplier, updated)
  return fn


def make_meta_step(task_sampler: TaskSampler, learner: Learner, optimizer: optax.GradientTransformation, *,
                   meta_batch_size: int, settings: InnerSettings,
                   gates: gate_source.GateSource = gate_source.no_gates(),
                   objective: l0_objective.L0Objective = l0_objective.L0Objective(),
                   harden_step: int | None = None, mesh: jax.sharding.Mesh | None = None) -> Step:
  """The pure ``step(state) -> (state, metrics)`` (wrap with ``compile_step``; module docstring).

  At ``harden_step`` (prune -> fine-tune) the gates are hardened to
  ``objective.target_sparsity``; the gate source's groups and the multiplier
  freeze. Metrics: ``outer/objective``, ``outer/query_loss``, ``mask/expected_sparsity``,
  ``mask/multiplier``, ``outer/nonfinite`` (1.0: the loss or a gradient was non-finite).
  """
  objective_fn, harden = meta_objective(learner, gates, objective, settings, harden_step), harden_at(gates, harden_step)
  dual = dual_ascent(gates, objective)

  def step(state: MetaState):
    meta_params = harden(state.meta_params, state.step)
    key, task_key, gate_key = jax.random.split(state.key, 3)
    tasks = task_sampler(task_key, meta_batch_size)
    tasks = tasks if mesh is None else sharding.shard_tasks(tasks, mesh)
    (total, (query_loss, density)), grads = jax.value_and_grad(objective_fn, has_aux=True)(
        meta_params, state.multiplier, tasks, gate_key, state.step, state.masks)
    frozen = None if harden_step is None else state.step >= harden_step
    grads = freeze(grads, gates.groups, frozen)
    updates, opt_state = optimizer.update(grads, state.opt_state, meta_params)
    new_params = optax.apply_updates(meta_params, freeze(updates, gates.groups, frozen))
    if state.masks is not None:  # Momentum from before pruning must not revive a pruned weight.
      new_params = {**new_params, 'params': masking.apply_masks(new_params['params'], state.masks)}
    multiplier = dual(state.multiplier, query_loss, density, state.step, frozen)
    metrics = {'outer/objective': total, 'outer/query_loss': query_loss, 'mask/expected_sparsity': 1.0 - density,
               'mask/multiplier': multiplier,
               'outer/nonfinite': 1.0 - guards.all_finite(total, grads).astype(jnp.float32)}
    return MetaState(new_params, opt_state, multiplier, state.step + 1, key, state.masks), metrics
  return step


def skip_nonfinite(step: Step) -> Step:
  """Drops the update of a step whose loss or gradients were non-finite (``guards.keep_finite_update``)."""
  def guarded(state):
    new_state, metrics = step(state)
    return guards.keep_finite_update(metrics['outer/nonfinite'] == 0.0, new_state, state), metrics
  return guarded


# ``vmap`` axes of a seed-stacked ``MetaState``: every leaf has a leading ``[num_seeds]`` axis except the step
# counter, which the seeds share (so ``lax.cond`` on the step, e.g. at ``harden_step``, stays a branch).
SEED_AXES = MetaState(meta_params=0, opt_state=0, multiplier=0, step=None, key=0, masks=0)


def stack_seeds(states: Sequence[MetaState]) -> MetaState:
  """One ``MetaState`` holding ``states`` (same structure, same step) along a leading seed axis (``SEED_AXES``)."""
  steps = {int(s.step) for s in states}
  if len(steps) != 1:
    raise ValueError(f'the states to stack are at different steps {sorted(steps)}.')
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[s._replace(step=None) for s in states])
  return stacked._replace(step=states[0].step)


def seed_state(state: MetaState, index: int) -> MetaState:
  """Seed ``index`` of a ``stack_seeds`` state (an ordinary one-seed ``MetaState``)."""
  return jax.tree.map(lambda x: x[index], state._replace(step=None))._replace(step=state.step)


def over_seeds(step: Step) -> Step:
  """``step`` over a ``stack_seeds`` state: every seed's meta-step in one ``vmap``.

  Each seed keeps its own key, tasks, gates, optimiser state and multiplier, so seed ``i`` follows the run of
  its one-seed state (up to the float reassociation of batched kernels). Metrics gain a ``[num_seeds]`` axis,
  except ``outer/nonfinite``: 1.0 when any seed's loss or gradients were non-finite (per seed, ``skip_nonfinite``
  applied before this wrapper drops that seed's update only).
  """
  batched = jax.vmap(step, in_axes=(SEED_AXES,), out_axes=(SEED_AXES, 0))

  def fn(state):
    state, metrics = batched(state)
    return state, {**metrics, 'outer/nonfinite': jnp.max(metrics['outer/nonfinite'])}
  return fn


def repeat_steps(step: Step, num_steps: int) -> Step:
  """``num_steps`` meta-steps per call in a ``lax.scan`` (metrics stacked, each ``[num_steps]``)."""
  if int(num_steps) < 1:
    raise ValueError(f'steps_per_call must be a positive integer, got {num_steps!r}.')
  if num_steps == 1:
    return step
  return lambda state: jax.lax.scan(lambda carry, _: step(carry), state, None, length=int(num_steps))


def jit_step(step: Step, *, mesh: jax.sharding.Mesh | None = None, donate: bool = True) -> Step:
  """One ``jax.jit`` of ``step`` with the state donated (replicated over ``mesh``'s devices)."""
  return jax.jit(step, donate_argnums=(0,) if donate else (), **sharding.jit_shardings(mesh))


def compile_step(step: Step, *, steps_per_call: int = 1, nonfinite: str = 'stop',
                 mesh: jax.sharding.Mesh | None = None, donate: bool = True, stacked_seeds: bool = False) -> Step:
  """The wrappers in their order: ``skip_nonfinite`` (``nonfinite='skip'``), ``over_seeds`` (``stacked_seeds``:
  the state is a ``stack_seeds`` one), ``repeat_steps``, ``jit_step``."""
  if nonfinite not in guards.NONFINITE_MODES:
    raise ValueError(f'nonfinite={nonfinite!r} is invalid: use one of {guards.NONFINITE_MODES}.')
  if stacked_seeds and mesh is not None:
    raise ValueError('stacked seeds run on one device: the task batch is not sharded across a mesh as well.')
  if nonfinite == 'skip':
    step = skip_nonfinite(step)
  if stacked_seeds:
    step = over_seeds(step)
  return jit_step(repeat_steps(step, steps_per_call), mesh=mesh, donate=donate)
