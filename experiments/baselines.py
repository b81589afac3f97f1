"""Classic pruning inside the MAML loop: the baselines of the accuracy-vs-sparsity frontier.

Every baseline meta-trains the dense weights with a *fixed* mask held in
``MetaState.masks``: the mask multiplies the weights in the inner loop and in the
outer forward pass, and the step re-applies it after each outer update, so a
pruned weight stays exactly zero. Every method takes exactly
``config.num_outer_steps`` meta-steps (an equal meta-training budget):

* ``magnitude_finetune``: dense for ``finetune_dense_fraction`` of the budget,
  one-shot magnitude pruning to the target, fixed-mask meta-training after.
* ``snip``: prune at meta-initialisation by ``|w * dL/dw|`` where ``L`` is the
  MAML meta-loss (query loss after adaptation) on ``snip_num_tasks`` tasks.
* ``gradual_magnitude``: Zhu & Gupta's polynomial schedule (power 3) from
  ``gradual_begin_fraction`` to ``gradual_end_fraction`` of the budget; the
  masks are recomputed every ``gradual_update_every_steps`` outside the jitted
  step (same shapes, so the step never retraces).
* ``random``: uniform random pruning at initialisation (the sanity floor).

The state starts with all-ones masks (exactly the dense net), so one jitted step
serves the dense phase and the pruned phase without recompiling.

Config fields read here (defaults in ``DEFAULTS``; ``frontier_sinusoid.py`` sets
them): ``prune_scope`` ('global' or 'layerwise' top-k), ``prune_distribution``
('uniform' or 'erk' per-layer sparsities, layerwise only), ``finetune_dense_fraction``,
``snip_num_tasks``, ``gradual_begin_fraction``, ``gradual_end_fraction``,
``gradual_update_every_steps``; plus ``target_sparsity`` and the usual training fields.
"""

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from experiments import problems
from experiments import train
from metaprune_jax import types
from metaprune_jax.masks import criteria
from metaprune_jax.masks import schedules
from metaprune_jax.masks import select
from metaprune_jax.meta import evaluate
from metaprune_jax.meta import maml
from metaprune_jax.meta import step as meta_step
from metaprune_jax.nets import masked

DEFAULTS = {
    'prune_scope': 'global',
    'prune_distribution': 'uniform',
    'finetune_dense_fraction': 0.5,
    'snip_num_tasks': 100,
    'gradual_begin_fraction': 0.1,
    'gradual_end_fraction': 0.75,
    'gradual_update_every_steps': 500,
}
SNIP_KEY_SALT = 0x5319   # SNIP's task batch: folded off the seed, apart from the training stream.
RANDOM_KEY_SALT = 0xA11D  # Random pruning scores.

MaskCallback = Callable[[int, types.Masks], None]


def _field(config, name: str):
  return config.get(name, DEFAULTS[name])


def validate_baseline_config(config: ml_collections.ConfigDict) -> None:
  """Checks the baseline fields; errors name the flag and the fix."""
  def require(ok, name, rule):
    if not ok:
      raise ValueError(f'--config.{name}={_field(config, name)!r} is invalid: {rule}.')
  require(_field(config, 'prune_scope') in select.SCOPES, 'prune_scope', f'use one of {select.SCOPES}')
  require(_field(config, 'prune_distribution') in select.DISTRIBUTIONS, 'prune_distribution',
          f'use one of {select.DISTRIBUTIONS}')
  require(_field(config, 'prune_distribution') == 'uniform' or _field(config, 'prune_scope') == 'layerwise',
          'prune_distribution', "'erk' sets per-layer sparsities: use it with --config.prune_scope=layerwise")
  require(0.0 <= float(_field(config, 'finetune_dense_fraction')) < 1.0, 'finetune_dense_fraction',
          'must be in [0, 1) (the share of the budget trained dense before pruning)')
  require(int(_field(config, 'snip_num_tasks')) > 0, 'snip_num_tasks', 'must be a positive integer')
  begin, end = float(_field(config, 'gradual_begin_fraction')), float(_field(config, 'gradual_end_fraction'))
  require(0.0 <= begin < end, 'gradual_begin_fraction', 'must be >= 0 and below gradual_end_fraction')
  require(end <= 1.0, 'gradual_end_fraction', 'must be <= 1 (the target is reached inside the budget)')
  require(int(_field(config, 'gradual_update_every_steps')) > 0, 'gradual_update_every_steps',
          'must be a positive integer')
  if not 0.0 <= float(config.target_sparsity) < 1.0:
    raise ValueError(f'--config.target_sparsity={config.target_sparsity!r} is invalid: must be in [0, 1).')


def _selection(config) -> dict:
  return {'scope': _field(config, 'prune_scope'), 'distribution': _field(config, 'prune_distribution')}


def ones_masks(params: types.Params) -> types.Masks:
  """All-ones float32 masks at the prunable leaves (``criteria.default_prunable``), ``None`` elsewhere."""
  return masked.map_gated(lambda p, _: jnp.ones(jnp.shape(p), jnp.float32), params,
                          criteria.default_prunable(params))


def magnitude_masks(params: types.Params, sparsity: float, *, scope: str = 'global',
                    distribution: str = 'uniform') -> types.Masks:
  """Top-k ``|w|`` masks with exactly ``floor(sparsity * n + 0.5)`` zeros (global, or per layer).

  ``distribution='erk'`` (with ``scope='layerwise'``) gives small layers more
  density (``select.erk_densities``); the total is then exact up to rounding.
  """
  return select.topk_masks(criteria.magnitude_scores(params), sparsity, scope=scope, distribution=distribution)


def random_masks(key: types.PRNGKey, params: types.Params, sparsity: float, *, scope: str = 'global',
                 distribution: str = 'uniform') -> types.Masks:
  """Uniformly random masks with the exact sparsity (per layer with ``scope='layerwise'``)."""
  return select.topk_masks(criteria.random_scores(key, params), sparsity, scope=scope, distribution=distribution)


def snip_masks(params: types.Params, tasks: types.TaskBatch, *, loss_fn: maml.LossFn,
               settings: maml.InnerSettings, sparsity: float, scope: str = 'global',
               distribution: str = 'uniform') -> types.Masks:
  """SNIP on the meta-loss: keep the largest ``|w * dL/dw|``.

  Args:
    params: (meta-)parameters ``w``, usually the meta-initialisation.
    tasks: a batch of tasks, e.g. support inputs ``[tasks, shots, 1]``.
    loss_fn: ``(params, inputs, targets) -> scalar``.
    settings: inner-loop settings; ``L`` is ``maml.batch_query_loss``, the mean
      query loss after ``settings.num_inner_steps`` adaptation steps (dense).
    sparsity: fraction of prunable weights to remove, in ``[0, 1)``.
    scope: 'global' or 'layerwise'.
    distribution: 'uniform' or 'erk' (layerwise only).

  Returns:
    Mask tree mirroring ``params`` with exactly the requested sparsity.
  """
  def meta_loss(p):
    return maml.batch_query_loss({'params': p, 'gate_logits': None}, tasks, jax.random.key(0),
                                 loss_fn=loss_fn, settings=settings, gate_mode='off')
  grads = jax.jit(jax.grad(meta_loss))(params)
  return select.topk_masks(criteria.snip_scores(params, grads), sparsity, scope=scope, distribution=distribution)


def with_masks(state: meta_step.MetaState, masks: types.Masks) -> meta_step.MetaState:
  """``state`` with new fixed masks and the weights they prune zeroed (same shapes: no retrace)."""
  params = masked.apply_masks(state.meta_params['params'], masks)
  return state._replace(meta_params={**state.meta_params, 'params': params}, masks=masks)


def _dense_config(config) -> ml_collections.ConfigDict:
  dense = ml_collections.ConfigDict(config.to_dict())
  dense.mask = 'none'
  return dense


def _setup(config, problem):
  """Validated config, problem, a dense state with all-ones masks and its jitted step."""
  train.validate_config(config)
  validate_baseline_config(config)
  config = _dense_config(config)
  problem = problem or problems.get_problem(config)
  state, optimizer = train.init_state(config, problem)
  state = with_masks(state, ones_masks(state.meta_params['params']))
  step_fn = meta_step.make_meta_step(problem.train_sampler, problem.loss_fn, optimizer,
                                     meta_batch_size=int(config.meta_batch_size),
                                     settings=train.inner_settings(config))
  return config, problem, state, step_fn


def _meta_train(state, step_fn, num_steps: int, *,
                prune_at: Callable[[int, meta_step.MetaState], types.Masks | None] | None = None,
                log_every_steps: int = 0, name: str = ''):
  """Runs ``step_fn`` until ``state.step == num_steps``.

  Before each step, ``prune_at(step, state)`` may return new masks, which are
  swapped in (host side, outside the jitted step).
  """
  t0, start = time.perf_counter(), int(state.step)
  for step in range(start, num_steps):
    if prune_at is not None:
      masks = prune_at(step, state)
      if masks is not None:
        state = with_masks(state, masks)
    state, metrics = step_fn(state)
    if log_every_steps and ((step + 1) % log_every_steps == 0 or step + 1 == num_steps):
      loss = float(metrics['outer/query_loss'])
      if not np.isfinite(loss):
        raise FloatingPointError(f'{name}: non-finite query loss at step {step + 1}. Lower --config.outer_lr '
                                 'or --config.inner_lr, or set --config.grad_clip_norm.')
      logging.info('%s step %d/%d | query loss %.4f | mask sparsity %.3f | %.0f steps/s', name, step + 1,
                   num_steps, loss, float(select.mask_sparsity(state.masks)),
                   (step + 1 - start) / max(time.perf_counter() - t0, 1e-9))
  return state


def magnitude_finetune(config, problem: problems.Problem | None = None, *,
                       on_mask_update: MaskCallback | None = None) -> meta_step.MetaState:
  """Dense meta-training, one-shot magnitude pruning, fixed-mask meta-training; returns the final state."""
  config, problem, state, step_fn = _setup(config, problem)
  num_steps = int(config.num_outer_steps)
  prune_step = int(round(float(_field(config, 'finetune_dense_fraction')) * num_steps))
  sparsity, selection = float(config.target_sparsity), _selection(config)

  def prune_at(step, state):
    if step != prune_step:
      return None
    masks = magnitude_masks(state.meta_params['params'], sparsity, **selection)
    if on_mask_update is not None:
      on_mask_update(step, masks)
    return masks
  return _meta_train(state, step_fn, num_steps, prune_at=prune_at, log_every_steps=int(config.log_every_steps),
                     name='magnitude_finetune')


def snip(config, problem: problems.Problem | None = None, *,
         on_mask_update: MaskCallback | None = None) -> meta_step.MetaState:
  """SNIP on the MAML meta-loss at meta-initialisation, then fixed-mask meta-training."""
  config, problem, state, step_fn = _setup(config, problem)
  key = jax.random.fold_in(jax.random.key(int(config.seed)), SNIP_KEY_SALT)
  tasks = problem.train_sampler(key, int(_field(config, 'snip_num_tasks')))
  masks = snip_masks(state.meta_params['params'], tasks, loss_fn=problem.loss_fn,
                     settings=train.inner_settings(config), sparsity=float(config.target_sparsity),
                     **_selection(config))
  if on_mask_update is not None:
    on_mask_update(0, masks)
  state = with_masks(state, masks)
  return _meta_train(state, step_fn, int(config.num_outer_steps), log_every_steps=int(config.log_every_steps),
                     name='snip')


def gradual_schedule(config) -> tuple[schedules.Schedule, int, int, int]:
  """The polynomial (power 3) schedule of ``gradual_magnitude``: ``(schedule, begin, end, every)``."""
  num_steps = int(config.num_outer_steps)
  begin = int(round(float(_field(config, 'gradual_begin_fraction')) * num_steps))
  end = max(int(round(float(_field(config, 'gradual_end_fraction')) * num_steps)), begin + 1)
  every = int(_field(config, 'gradual_update_every_steps'))
  schedule = schedules.polynomial_schedule(float(config.target_sparsity), begin, end, power=3,
                                           update_every_steps=every)
  return schedule, begin, end, every


def gradual_magnitude(config, problem: problems.Problem | None = None, *,
                      on_mask_update: MaskCallback | None = None) -> meta_step.MetaState:
  """Gradual magnitude pruning during meta-training (Zhu & Gupta 2017).

  At ``begin`` and every ``gradual_update_every_steps`` after it, and at
  ``end`` (where the schedule reaches ``target_sparsity`` exactly), the masks
  are recomputed on the host by magnitude at the schedule's sparsity and
  swapped into the state. Pruned weights are zero, hence the smallest scores,
  so a weight once pruned stays pruned.
  """
  config, problem, state, step_fn = _setup(config, problem)
  schedule, begin, end, every = gradual_schedule(config)
  selection = _selection(config)

  def prune_at(step, state):
    if step < begin or step > end or ((step - begin) % every and step != end):
      return None
    sparsity = float(config.target_sparsity) if step >= end else float(schedule(step))  # Exact at the end.
    masks = magnitude_masks(state.meta_params['params'], sparsity, **selection)
    if on_mask_update is not None:
      on_mask_update(step, masks)
    return masks
  return _meta_train(state, step_fn, int(config.num_outer_steps), prune_at=prune_at,
                     log_every_steps=int(config.log_every_steps), name='gradual_magnitude')


def random_pruning(config, problem: problems.Problem | None = None, *,
                   on_mask_update: MaskCallback | None = None) -> meta_step.MetaState:
  """Random masks at meta-initialisation, then fixed-mask meta-training (the sanity floor)."""
  config, problem, state, step_fn = _setup(config, problem)
  key = jax.random.fold_in(jax.random.key(int(config.seed)), RANDOM_KEY_SALT)
  masks = random_masks(key, state.meta_params['params'], float(config.target_sparsity),
                       **_selection(config))
  if on_mask_update is not None:
    on_mask_update(0, masks)
  state = with_masks(state, masks)
  return _meta_train(state, step_fn, int(config.num_outer_steps), log_every_steps=int(config.log_every_steps),
                     name='random')


BASELINES: dict[str, Callable[..., meta_step.MetaState]] = {
    'magnitude_finetune': magnitude_finetune,
    'snip': snip,
    'gradual_magnitude': gradual_magnitude,
    'random': random_pruning,
}


def run_baseline(method: str, config, problem: problems.Problem | None = None, **kwargs) -> meta_step.MetaState:
  """Runs the baseline named ``method``; unknown names list the valid ones."""
  if method not in BASELINES:
    raise ValueError(f'baseline {method!r} is unknown; valid baselines: {", ".join(BASELINES)}.')
  return BASELINES[method](config, problem, **kwargs)


def held_out_traces(config, meta_params, problem: problems.Problem, *, gate_mode: str = 'off',
                    fixed_masks: types.Masks | None = None) -> dict[int, np.ndarray]:
  """Per-task query losses on the held-out tasks of ``train.evaluate_model``.

  Same tasks (``train.held_out_tasks``), same inner learning rate (``eval_inner_lr``) and horizon
  (``max(eval_steps)``); returns ``{shots: [eval_num_tasks, max_steps + 1]}``.
  """
  settings = train.eval_settings(config)
  out = {}
  for shots in config.eval_shots:
    tasks = train.held_out_tasks(config, problem, shots)
    out[int(shots)] = evaluate.query_loss_traces(meta_params, tasks, loss_fn=problem.loss_fn, settings=settings,
                                                 gate_mode=gate_mode, fixed_masks=fixed_masks)
  return out


def summarise_held_out(config, traces: dict[int, np.ndarray]) -> dict:
  """``{'shots_K': {'step_k': summary}}`` in the layout of ``train.evaluate_model``."""
  return {f'shots_{shots}': evaluate.summarise_traces(
      t, [int(k) for k in config.eval_steps], divergence_threshold=float(config.divergence_threshold),
      divergence_ratio=float(config.divergence_ratio)) for shots, t in traces.items()}


def evaluate_baseline(config, state: meta_step.MetaState, problem: problems.Problem | None = None) -> dict:
  """Held-out evaluation of a fixed-mask model, in the layout of ``train.evaluate_model``."""
  problem = problem or problems.get_problem(config)
  traces = held_out_traces(config, state.meta_params, problem, gate_mode='off', fixed_masks=state.masks)
  return {'sparse': summarise_held_out(config, traces)}
