"""Classic pruning inside the MAML loop: the baselines of the accuracy-vs-sparsity frontier.

Every baseline meta-trains the dense weights with a *fixed* mask held in
``MetaState.masks``: the mask multiplies the weights in the inner loop and in the
outer forward pass, and the step re-applies it after each outer update, so a
pruned weight stays exactly zero. Every method takes exactly
``config.outer.num_outer_steps`` meta-steps (an equal meta-training budget):

* ``magnitude_finetune``: dense for ``finetune_dense_fraction`` of the budget,
  one-shot magnitude pruning to the target, fixed-mask meta-training after.
* ``filter_finetune``: as ``magnitude_finetune``, removing whole output units
  (neurons, conv filters) of every hidden layer by L1 norm.
* ``iterative_magnitude``: dense, then ``imp_cycles`` prune -> rewind -> train
  cycles (lottery-ticket rewinding to ``imp_rewind_fraction`` of the budget).
* ``snip``: prune at meta-initialisation by ``|w * dL/dw|`` where ``L`` is the
  MAML meta-loss (query loss after adaptation) on ``snip_num_tasks`` tasks.
* ``gradual_magnitude``: Zhu & Gupta's polynomial schedule (power 3) from
  ``gradual_begin_fraction`` to ``gradual_end_fraction`` of the budget; the
  masks are recomputed every ``gradual_update_every_steps`` outside the jitted
  step (same shapes, so the step never retraces).
* ``random``: uniform random pruning at initialisation (the sanity floor).
* ``rl``: as ``magnitude_finetune``, with the per-layer kept counts chosen at
  the prune step by a policy-gradient controller on validation tasks
  (``experiments/allocation.py``; ``pruning.budget`` and the ``pruning.rl_*`` fields).
* ``l0``: as ``magnitude_finetune``, with the per-layer kept counts that
  hard-concrete gates learn on the same config and seed (``allocation.l0_gates``).
* ``rl_l0_fill``: as ``rl``, filling each layer's count by those gates' logits
  instead of the weights' magnitudes; ``erk_l0_fill`` and ``l0_l0_fill`` fill
  ERK's and the gates' own counts that way (the controls of the fill).
* ``uniform_budget`` and ``erk_budget``: as ``magnitude_finetune``, with the
  fixed rules' per-layer kept counts on ``pruning.budget`` (equal keep ratios,
  or ERK's densities scaled to spend the budget; ``allocation.reference_allocations``):
  at ``budget='flops'`` the rules the controller is measured against, on its budget.

The state starts with all-ones masks (exactly the dense net), so one jitted step
serves the dense phase and the pruned phase without recompiling.

Config fields read here: the ``pruning`` section (``experiments/configs/base.py``):
``prune_scope`` ('global' or 'layerwise' top-k), ``prune_distribution``
('uniform' or 'erk' per-layer sparsities, layerwise only), ``finetune_dense_fraction``,
``snip_num_tasks``, ``gradual_begin_fraction``, ``gradual_end_fraction``,
``gradual_update_every_steps``; plus ``sparsity.target_sparsity``, ``gates.dense_layers`` (layers no baseline
prunes, as the gates leave them dense: the sparsity is over the same weights) and the usual training fields.

Every baseline runs on ``dense_experiment(config)``: ``build`` of the config with
``gates.mask='none'``, so ``--config.algorithm`` (the learner), the inner loop
and the outer optimiser mean what they mean for the gated runs.
"""

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from experiments import allocation
from experiments import build as build_lib
from metaprune_jax import types
from metaprune_jax.masks import masking
from metaprune_jax.masks import sparsity as sparsity_lib
from metaprune_jax.meta import step as meta_step
from metaprune_jax.pruning import schedules
from metaprune_jax.pruning.baselines import filter_masks
from metaprune_jax.pruning.baselines import magnitude_masks
from metaprune_jax.pruning.baselines import ones_masks
from metaprune_jax.pruning.baselines import random_masks
from metaprune_jax.pruning.baselines import snip_masks

SNIP_KEY_SALT = 0x5319   # SNIP's task batch: folded off the seed, apart from the training stream.
RANDOM_KEY_SALT = 0xA11D  # Random pruning scores.

MaskCallback = Callable[[int, types.Masks], None]


def _selection(config) -> dict:
  return {'scope': config.pruning.prune_scope, 'distribution': config.pruning.prune_distribution}


def gated_layer_masks(config, params: types.Params,
                      make_masks: Callable[[types.Params], types.Masks]) -> types.Masks:
  """``make_masks`` on the layers the gates prune: those in ``gates.dense_layers`` (e.g. Omniglot's head, which a
  ProtoNet never uses) stay all ones, so a baseline's sparsity is over the same weights as the gates'.

  Args:
    config: the experiment's config (``gates.dense_layers``: top-level parameter names).
    params: the parameter tree.
    make_masks: ``params -> masks`` over every prunable kernel of the tree it is given.

  Returns:
    A mask tree with the structure of ``ones_masks(params)``.
  """
  dense_layers = tuple(config.gates.dense_layers)
  if not dense_layers:
    return make_masks(params)
  masks = make_masks({name: layer for name, layer in params.items() if name not in dense_layers})
  ones = ones_masks(params)
  return {name: ones[name] if name in dense_layers else masks[name] for name in params}


def dense_experiment(config: ml_collections.ConfigDict) -> build_lib.Experiment:
  """``build`` of ``config`` without gates: what every baseline meta-trains under its fixed masks."""
  dense = ml_collections.ConfigDict(config.to_dict())
  dense.gates.mask = 'none'
  dense.eval.dense_reference = False
  return build_lib.build(dense)


def snip_loss(exp: build_lib.Experiment, meta_params: dict,
              tasks: types.TaskBatch) -> Callable[[types.Params], jax.Array]:
  """SNIP's loss ``params -> L`` on ``tasks``, for ``snip_masks``: the learner's mean query loss after
  ``inner.num_inner_steps`` dense adaptation steps (``exp.learner.batch_loss``)."""
  def meta_loss(params):
    return exp.learner.batch_loss({**meta_params, 'params': params}, tasks, jax.random.key(0),
                                  settings=exp.settings, gate_mode='off')
  return meta_loss


def with_masks(state: meta_step.MetaState, masks: types.Masks) -> meta_step.MetaState:
  """``state`` with new fixed masks and the weights they prune zeroed (same shapes: no retrace)."""
  params = masking.apply_masks(state.meta_params['params'], masks)
  return state._replace(meta_params={**state.meta_params, 'params': params}, masks=masks)


def _setup(exp: build_lib.Experiment):
  """A dense state with all-ones masks and its jitted step."""
  if exp.config.gates.mask != 'none':
    raise ValueError('baselines run on dense_experiment(config) (gates.mask=none), got gates.mask='
                     f'{exp.config.gates.mask!r}.')
  state = exp.init_state()
  return with_masks(state, ones_masks(state.meta_params['params'])), exp.make_step(1)


def _meta_train(state, step_fn, num_steps: int, *,
                prune_at: Callable[[int, meta_step.MetaState], meta_step.MetaState | None] | None = None,
                log_every_steps: int = 0, name: str = ''):
  """Runs ``step_fn`` until ``state.step == num_steps``.

  Before each step, ``prune_at(step, state)`` may return a new state (new masks
  swapped in on the host, outside the jitted step).
  """
  t0, start = time.perf_counter(), int(state.step)
  for step in range(start, num_steps):
    if prune_at is not None:
      state = prune_at(step, state) or state
    state, metrics = step_fn(state)
    if log_every_steps and ((step + 1) % log_every_steps == 0 or step + 1 == num_steps):
      loss = float(metrics['outer/query_loss'])
      if not np.isfinite(loss):
        raise FloatingPointError(f'{name}: non-finite query loss at step {step + 1}. Lower '
                                 '--config.outer.outer_lr or --config.inner.inner_lr, or set '
                                 '--config.outer.grad_clip_norm.')
      logging.info('%s step %d/%d | query loss %.4f | mask sparsity %.3f | %.0f steps/s', name, step + 1,
                   num_steps, loss, float(sparsity_lib.mask_sparsity(state.masks)),
                   (step + 1 - start) / max(time.perf_counter() - t0, 1e-9))
  return state


def _prune_once(exp: build_lib.Experiment, make_masks: Callable[[types.Params], types.Masks], name: str,
                on_mask_update: MaskCallback | None) -> meta_step.MetaState:
  """Dense meta-training for ``finetune_dense_fraction`` of the budget, one prune, fixed-mask meta-training."""
  config = exp.config
  state, step_fn = _setup(exp)
  num_steps = int(config.outer.num_outer_steps)
  prune_step = int(round(float(config.pruning.finetune_dense_fraction) * num_steps))

  def prune_at(step, state):
    if step != prune_step:
      return None
    masks = make_masks(state.meta_params['params'])
    if on_mask_update is not None:
      on_mask_update(step, masks)
    return with_masks(state, masks)
  return _meta_train(state, step_fn, num_steps, prune_at=prune_at, log_every_steps=int(config.run.log_every_steps),
                     name=name)


def magnitude_finetune(exp: build_lib.Experiment, *,
                       on_mask_update: MaskCallback | None = None) -> meta_step.MetaState:
  """Dense meta-training, one-shot magnitude pruning, fixed-mask meta-training; returns the final state."""
  sparsity, selection = float(exp.config.sparsity.target_sparsity), _selection(exp.config)
  return _prune_once(exp, lambda params: gated_layer_masks(
      exp.config, params, lambda kept: magnitude_masks(kept, sparsity, **selection)), 'magnitude_finetune',
                     on_mask_update)


def filter_finetune(exp: build_lib.Experiment, *,
                    on_mask_update: MaskCallback | None = None) -> meta_step.MetaState:
  """As ``magnitude_finetune`` with structured masks: ``target_sparsity`` of every hidden layer's output units
  (neurons, conv filters) removed by L1 norm (``pruning.baselines.filter_masks``; the head is kept)."""
  sparsity = float(exp.config.sparsity.target_sparsity)
  exclude = tuple(exp.problem.head_keys) + tuple(exp.config.gates.dense_layers)
  return _prune_once(exp, lambda params: filter_masks(params, sparsity, exclude=exclude), 'filter_finetune',
                     on_mask_update)


def iterative_magnitude(exp: build_lib.Experiment, *,
                        on_mask_update: MaskCallback | None = None) -> meta_step.MetaState:
  """Iterative magnitude pruning with weight rewinding (Frankle et al. 2020) inside the budget.

  Dense until ``finetune_dense_fraction`` of the budget, then ``imp_cycles``
  equal cycles: each starts by pruning to the geometric schedule's sparsity
  (``schedules.iterative_schedule``: every cycle removes the same share of the
  remaining weights, the last reaches ``target_sparsity``) and rewinding the
  kept weights to their values at ``imp_rewind_fraction`` of the budget.
  """
  config = exp.config
  state, step_fn = _setup(exp)
  num_steps, pruning = int(config.outer.num_outer_steps), config.pruning
  begin = int(round(float(pruning.finetune_dense_fraction) * num_steps))
  rewind_step = min(int(round(float(pruning.imp_rewind_fraction) * num_steps)), begin)
  cycles = int(pruning.imp_cycles)
  per_cycle = max((num_steps - begin) // cycles, 1)
  schedule = schedules.iterative_schedule(float(config.sparsity.target_sparsity), cycles, per_cycle,
                                          begin_step=begin)
  selection, early = _selection(config), {}

  def prune_at(step, state):
    if step == rewind_step:  # A copy: the jitted step donates the state's buffers.
      early['params'] = jax.tree.map(jnp.copy, state.meta_params['params'])
    if step < begin or (step - begin) % per_cycle or (step - begin) // per_cycle >= cycles:
      return None
    masks = gated_layer_masks(config, state.meta_params['params'],
                              lambda kept: magnitude_masks(kept, float(schedule(step)), **selection))
    if on_mask_update is not None:
      on_mask_update(step, masks)
    rewound = schedules.rewind(state.meta_params['params'], jax.tree.map(jnp.copy, early['params']), masks)
    return with_masks(state._replace(meta_params={**state.meta_params, 'params': rewound}), masks)
  return _meta_train(state, step_fn, num_steps, prune_at=prune_at, log_every_steps=int(config.run.log_every_steps),
                     name='iterative_magnitude')


def snip(exp: build_lib.Experiment, *, on_mask_update: MaskCallback | None = None) -> meta_step.MetaState:
  """SNIP on the learner's meta-loss at meta-initialisation, then fixed-mask meta-training."""
  config = exp.config
  state, step_fn = _setup(exp)
  key = jax.random.fold_in(jax.random.key(int(config.seed)), SNIP_KEY_SALT)
  tasks = exp.problem.train_sampler(key, int(config.pruning.snip_num_tasks))
  params, meta_loss = state.meta_params['params'], snip_loss(exp, state.meta_params, tasks)
  masks = gated_layer_masks(config, params, lambda kept: snip_masks(
      kept, lambda kept_params: meta_loss({**params, **kept_params}), float(config.sparsity.target_sparsity),
      **_selection(config)))
  if on_mask_update is not None:
    on_mask_update(0, masks)
  state = with_masks(state, masks)
  return _meta_train(state, step_fn, int(config.outer.num_outer_steps),
                     log_every_steps=int(config.run.log_every_steps), name='snip')


def gradual_schedule(config) -> tuple[schedules.Schedule, int, int, int]:
  """The polynomial (power 3) schedule of ``gradual_magnitude``: ``(schedule, begin, end, every)``."""
  num_steps, pruning = int(config.outer.num_outer_steps), config.pruning
  begin = int(round(float(pruning.gradual_begin_fraction) * num_steps))
  end = max(int(round(float(pruning.gradual_end_fraction) * num_steps)), begin + 1)
  every = int(pruning.gradual_update_every_steps)
  schedule = schedules.polynomial_schedule(float(config.sparsity.target_sparsity), begin, end, power=3,
                                           update_every_steps=every)
  return schedule, begin, end, every


def gradual_magnitude(exp: build_lib.Experiment, *,
                      on_mask_update: MaskCallback | None = None) -> meta_step.MetaState:
  """Gradual magnitude pruning during meta-training (Zhu & Gupta 2017).

  At ``begin`` and every ``gradual_update_every_steps`` after it, and at
  ``end`` (where the schedule reaches ``target_sparsity`` exactly), the masks
  are recomputed on the host by magnitude at the schedule's sparsity and
  swapped into the state. Pruned weights are zero, hence the smallest scores,
  so a weight once pruned stays pruned.
  """
  config = exp.config
  state, step_fn = _setup(exp)
  schedule, begin, end, every = gradual_schedule(config)
  selection = _selection(config)

  def prune_at(step, state):
    if step < begin or step > end or ((step - begin) % every and step != end):
      return None
    sparsity = float(config.sparsity.target_sparsity) if step >= end else float(schedule(step))  # Exact at end.
    masks = gated_layer_masks(config, state.meta_params['params'],
                              lambda kept: magnitude_masks(kept, sparsity, **selection))
    if on_mask_update is not None:
      on_mask_update(step, masks)
    return with_masks(state, masks)
  return _meta_train(state, step_fn, int(config.outer.num_outer_steps), prune_at=prune_at,
                     log_every_steps=int(config.run.log_every_steps), name='gradual_magnitude')


def random_pruning(exp: build_lib.Experiment, *,
                   on_mask_update: MaskCallback | None = None) -> meta_step.MetaState:
  """Random masks at meta-initialisation, then fixed-mask meta-training (the sanity floor)."""
  config = exp.config
  state, step_fn = _setup(exp)
  key = jax.random.fold_in(jax.random.key(int(config.seed)), RANDOM_KEY_SALT)
  masks = gated_layer_masks(config, state.meta_params['params'], lambda kept: random_masks(
      key, kept, float(config.sparsity.target_sparsity), **_selection(config)))
  if on_mask_update is not None:
    on_mask_update(0, masks)
  state = with_masks(state, masks)
  return _meta_train(state, step_fn, int(config.outer.num_outer_steps),
                     log_every_steps=int(config.run.log_every_steps), name='random')


def rl_allocation(exp: build_lib.Experiment, *, on_mask_update: MaskCallback | None = None,
                  on_search: Callable[[allocation.SearchResult], None] | None = None,
                  fill: str = 'magnitude') -> meta_step.MetaState:
  """As ``magnitude_finetune``, pruning each layer to the kept count the controller chose.

  At the prune step ``allocation.search`` runs the controller from the dense
  state (``on_search`` receives its result), then the fixed-mask meta-training
  is the same as ``magnitude_finetune``'s. ``fill``: which weights of a layer
  stay, the largest ``'magnitude'`` or ``'l0'`` gate logits (``allocation.l0_gates``).
  """
  config = exp.config
  scores = allocation.l0_gates(config)[1] if fill == 'l0' else None
  allocation.check_task(config)
  state, step_fn = _setup(exp)
  num_steps = int(config.outer.num_outer_steps)
  prune_step = int(round(float(config.pruning.finetune_dense_fraction) * num_steps))

  def prune_at(step, state):
    if step != prune_step:
      return None
    result = allocation.search(exp, state, scores=scores)
    if on_search is not None:
      on_search(result)
    masks = allocation.allocation_masks(state.meta_params['params'], result.counts, scores)
    if on_mask_update is not None:
      on_mask_update(step, masks)
    return with_masks(state, masks)
  return _meta_train(state, step_fn, num_steps, prune_at=prune_at, log_every_steps=int(config.run.log_every_steps),
                     name='rl' if fill == 'magnitude' else f'rl_{fill}_fill')


def rl_l0_fill(exp: build_lib.Experiment, *, on_mask_update: MaskCallback | None = None,
               on_search: Callable[[allocation.SearchResult], None] | None = None) -> meta_step.MetaState:
  """``rl_allocation`` filling each layer by the hard-concrete gates' logits (``allocation.l0_gates``)."""
  return rl_allocation(exp, on_mask_update=on_mask_update, on_search=on_search, fill='l0')


def _fixed_allocation(exp: build_lib.Experiment, counts: str, fill: str, name: str,
                      on_mask_update: MaskCallback | None) -> meta_step.MetaState:
  """``_prune_once`` to the per-layer kept counts of ``counts`` ('uniform' or 'erk' on ``pruning.budget``:
  ``allocation.reference_allocations``; 'l0': ``allocation.l0_gates``), each layer filled by the largest
  ``fill`` scores ('magnitude' or 'l0': the gates' logits)."""
  gated = allocation.l0_gates(exp.config) if 'l0' in (counts, fill) else None
  scores = gated[1] if fill == 'l0' else None

  def make_masks(params):
    if counts == 'l0':
      kept = gated[0]
    else:
      kept = allocation.reference_allocations(exp.config, params, allocation.budget_for(exp.config, params))[counts]
    return allocation.allocation_masks(params, kept, scores)
  return _prune_once(exp, make_masks, name, on_mask_update)


def uniform_budget(exp: build_lib.Experiment, *,
                   on_mask_update: MaskCallback | None = None) -> meta_step.MetaState:
  """As ``magnitude_finetune``, every prunable layer kept at one ratio chosen to spend ``pruning.budget``."""
  return _fixed_allocation(exp, 'uniform', 'magnitude', 'uniform_budget', on_mask_update)


def erk_budget(exp: build_lib.Experiment, *,
               on_mask_update: MaskCallback | None = None) -> meta_step.MetaState:
  """As ``magnitude_finetune``, each layer kept at ERK's density scaled to spend ``pruning.budget``."""
  return _fixed_allocation(exp, 'erk', 'magnitude', 'erk_budget', on_mask_update)


def l0_allocation(exp: build_lib.Experiment, *,
                  on_mask_update: MaskCallback | None = None) -> meta_step.MetaState:
  """As ``magnitude_finetune``, pruning each layer by magnitude to the kept count of the hard-concrete gates
  learned on the same config and seed (``allocation.l0_gates``)."""
  return _fixed_allocation(exp, 'l0', 'magnitude', 'l0', on_mask_update)


def erk_l0_fill(exp: build_lib.Experiment, *,
                on_mask_update: MaskCallback | None = None) -> meta_step.MetaState:
  """ERK's per-layer kept counts filled by the hard-concrete gates' logits (the control of ``rl_l0_fill``)."""
  return _fixed_allocation(exp, 'erk', 'l0', 'erk_l0_fill', on_mask_update)


def l0_l0_fill(exp: build_lib.Experiment, *,
               on_mask_update: MaskCallback | None = None) -> meta_step.MetaState:
  """The hard-concrete gates' own mask (their counts, filled by their logits) on the dense weights, fine-tuned."""
  return _fixed_allocation(exp, 'l0', 'l0', 'l0_l0_fill', on_mask_update)


BASELINES: dict[str, Callable[..., meta_step.MetaState]] = {
    'magnitude_finetune': magnitude_finetune,
    'filter_finetune': filter_finetune,
    'iterative_magnitude': iterative_magnitude,
    'snip': snip,
    'gradual_magnitude': gradual_magnitude,
    'random': random_pruning,
    'rl': rl_allocation,
    'l0': l0_allocation,
    'rl_l0_fill': rl_l0_fill,
    'erk_l0_fill': erk_l0_fill,
    'l0_l0_fill': l0_l0_fill,
    'uniform_budget': uniform_budget,
    'erk_budget': erk_budget,
}


def run_baseline(method: str, exp: build_lib.Experiment, **kwargs) -> meta_step.MetaState:
  """Runs the baseline named ``method`` on ``exp`` (``dense_experiment``); unknown names list the valid ones."""
  if method not in BASELINES:
    raise ValueError(f'baseline {method!r} is unknown; valid baselines: {", ".join(BASELINES)}.')
  return BASELINES[method](exp, **kwargs)
