"""The ``rl`` allocation: a policy-gradient controller picks per-layer kept counts under a global budget.

``search(exp, state)`` runs ``pruning.rl_episodes`` episodes of the REINFORCE
controller of ``metaprune_jax.pruning.controller`` from a dense meta-trained
state (the ``rl`` baseline calls it where ``magnitude_finetune`` prunes). One
episode, one ``jax.jit``:

1. the controller samples ``pruning.rl_candidates`` allocations on the budget
   (``pruning.budget``: ``'params'``, the kept kernel weights of
   ``sparsity.target_sparsity``, or ``'flops'``, effective forward FLOPs at most
   ``1 - target_sparsity`` of the dense net's; at least ``pruning.rl_min_kept``
   weights per layer);
2. every candidate (``vmap``) keeps the largest-magnitude weights of each
   layer (``select.count_masks``), takes ``pruning.rl_finetune_steps`` meta-steps
   of the run's own step (learner, optimiser state, meta-batch) under its mask,
   and adapts to ``pruning.rl_validation_tasks`` fresh **validation** tasks; its
   reward is minus the mean query loss after the ``eval.steps`` inner steps
   (each task's loss capped at ``eval.divergence_threshold``);
3. one REINFORCE step with a moving-average baseline.

All candidates of an episode share the fine-tune and validation tasks (common
random numbers: rewards differ by allocation only). The validation tasks come
from ``VALIDATION_KEY_SALT`` folded off the seed, never from the evaluation key
(``evaluation.EVAL_KEY_SALT``), and the fine-tune tasks from
``FINETUNE_KEY_SALT``, apart from the training stream. The controller's choice
is the projection of its policy mean after the last episode.

``l0_gates(config)`` meta-trains the hard-concrete gates of ``config`` (same
seed, budget and target; hardened at ``sparsity.harden_at_fraction``) and gives
the per-layer kept counts they learned and their logits: the ``l0`` baseline
fills those counts by magnitude; ``rl_l0_fill``, ``erk_l0_fill`` and
``l0_l0_fill`` fill the controller's, ERK's and the gates' own counts by the gate
logits instead of the magnitudes.
"""

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import build as build_lib
from metaprune_jax import flops
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import masking
from metaprune_jax.meta import step as step_lib
from metaprune_jax.pruning import controller as controller_lib
from metaprune_jax.pruning import criteria
from metaprune_jax.pruning import select

VALIDATION_KEY_SALT = 0x7A1D  # The reward's validation tasks (evaluation.EVAL_KEY_SALT is 0x5EED).
FINETUNE_KEY_SALT = 0xF1E7    # The candidates' brief fine-tune tasks.
CONTROLLER_KEY_SALT = 0xC7A1  # The controller's proposals.
TASKS = ('sinusoid',)  # Tasks whose validation tasks come from a key stream (no data split to keep apart).
CONVERGENCE_TOLERANCE = 0.05  # Share of the budget the chosen allocation may still move after convergence.


class SearchResult(NamedTuple):
  """What ``search`` found.

  Attributes:
    layers: the prunable layers' paths, in allocation order.
    budget: the ``LayerBudget`` every candidate spent.
    counts: the chosen allocation, kept weights per layer.
    history: per episode (lists): ``reward_mean``, ``reward_max``, ``baseline``, ``std``, ``allocation``
      (the projected policy mean after the episode), ``candidates`` and ``rewards``.
    episode_seconds: wall time of each episode (the first includes compilation).
  """
  layers: list[str]
  budget: controller_lib.LayerBudget
  counts: list[int]
  history: dict
  episode_seconds: list[float]


def _path_name(path) -> str:
  """``'Dense_0/kernel'`` of a pytree path."""
  return '/'.join(str(getattr(entry, 'key', entry)) for entry in path)


def prunable_layers(params) -> list[tuple[str, int]]:
  """``(path, size)`` of every prunable kernel (``criteria.default_prunable``), in tree-flatten order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(criteria.magnitude_scores(params))
  return [(_path_name(path), int(np.size(leaf))) for path, leaf in flat]


def budget_for(config: ml_collections.ConfigDict, params) -> controller_lib.LayerBudget:
  """The ``LayerBudget`` of ``pruning.budget`` at ``sparsity.target_sparsity`` for ``params`` (an MLP)."""
  sizes = [size for _, size in prunable_layers(params)]
  sparsity, pruning = float(config.sparsity.target_sparsity), config.pruning
  min_kept = int(pruning.rl_min_kept)
  if pruning.budget not in controller_lib.BUDGETS:
    raise ValueError(f'--config.pruning.budget={pruning.budget!r} is invalid: use one of {controller_lib.BUDGETS}.')
  if pruning.budget == 'params':
    return controller_lib.params_budget(sizes, sparsity, min_kept=min_kept)
  counts = flops.mlp_flops(params)  # A Dense kernel weight costs one multiply-add (2 FLOPs); biases are fixed.
  return controller_lib.flops_budget(sizes, [2] * len(sizes), sparsity,
                                     fixed_flops=counts['dense_flops'] - 2 * counts['kernel_weights'],
                                     min_kept=min_kept)


def erk_counts(config: ml_collections.ConfigDict, params) -> list[int]:
  """Kept weights per prunable layer of ``magnitude_masks(..., scope='layerwise', distribution='erk')`` at
  ``sparsity.target_sparsity``."""
  scores = criteria.magnitude_scores(params)
  erk = jax.tree.leaves(select.layer_sparsities(scores, float(config.sparsity.target_sparsity), 'erk'))
  return [n - min(int(np.floor(s * n + 0.5)), n) for s, n in zip(erk, (size for _, size in prunable_layers(params)))]


def reference_allocations(config: ml_collections.ConfigDict, params,
                          budget: controller_lib.LayerBudget) -> dict[str, list[int]]:
  """The fixed rules beside the controller: ``uniform`` (equal keep ratios on ``budget``) and ``erk``."""
  return {'uniform': [int(k) for k in controller_lib.project(jnp.zeros(len(budget.sizes)), budget)],
          'erk': erk_counts(config, params)}


def validation_tasks(config: ml_collections.ConfigDict, problem, episode):
  """The reward's ``pruning.rl_validation_tasks`` tasks of ``episode`` (may be traced), at ``eval.shots[0]``.

  Keyed by ``VALIDATION_KEY_SALT`` off the seed, then the shot count and the
  episode: a stream apart from the evaluation tasks' (``evaluation.held_out_tasks``).
  """
  shots = int(config.eval.shots[0])
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(int(config.seed)), VALIDATION_KEY_SALT), shots)
  return problem.eval_sampler(jax.random.fold_in(key, episode), int(config.pruning.rl_validation_tasks), shots)


def finetune_key(config: ml_collections.ConfigDict, episode):
  """The key of the candidates' fine-tune tasks in ``episode``."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(int(config.seed)), FINETUNE_KEY_SALT), episode)


def reward_fn(exp: build_lib.Experiment, dense_state: step_lib.MetaState, episode, scores=None):
  """``counts [C, L] -> rewards [C]`` of ``exp`` (a ``dense_experiment``) from ``dense_state`` (module docstring).

  Pure and jittable; ``episode`` (may be traced) picks the fine-tune and validation tasks; ``scores`` (a score
  tree, default the dense weights' magnitudes) picks the kept weights inside each layer.
  """
  config = exp.config
  step = step_lib.make_meta_step(exp.problem.train_sampler, exp.learner, exp.optimizer,
                                 meta_batch_size=int(config.outer.meta_batch_size), settings=exp.settings,
                                 gates=exp.gates, objective=exp.objective, harden_step=exp.harden_step)
  num_steps, steps = int(config.pruning.rl_finetune_steps), [int(k) for k in config.eval.steps]
  cap = float(config.eval.divergence_threshold)
  if scores is None:
    scores = criteria.magnitude_scores(dense_state.meta_params['params'])
  tasks = validation_tasks(config, exp.problem, episode)
  key = finetune_key(config, episode)

  def one(counts):
    masks = select.count_masks(scores, counts)
    params = masking.apply_masks(dense_state.meta_params['params'], masks)
    state = dense_state._replace(meta_params={**dense_state.meta_params, 'params': params}, key=key, masks=masks)
    state, _ = jax.lax.scan(lambda s, _: step(s), state, None, length=num_steps)
    losses = jax.vmap(lambda task: exp.eval_learner.task_traces(
        state.meta_params, task, settings=exp.eval_settings, gate_mode='off', fixed_masks=masks)['loss'],
                      in_axes=(0,))(tasks)  # [tasks, max(eval.steps) + 1]
    losses = jnp.minimum(jnp.nan_to_num(losses[:, jnp.asarray(steps)], nan=cap, posinf=cap), cap)
    return -jnp.mean(losses)

  return jax.vmap(one, in_axes=(0,))


def make_controller(config: ml_collections.ConfigDict,
                    budget: controller_lib.LayerBudget) -> controller_lib.Controller:
  """The REINFORCE controller of the ``pruning.rl_*`` fields on ``budget`` (Adam on the policy)."""
  pruning = config.pruning
  return controller_lib.reinforce(budget, optax.adam(float(pruning.rl_lr)),
                                  num_candidates=int(pruning.rl_candidates), init_std=float(pruning.rl_init_std),
                                  baseline_decay=float(pruning.rl_baseline_decay))


def initial_mean(config: ml_collections.ConfigDict, params) -> jax.Array:
  """The policy mean at start: equal logits (``rl_init='uniform'``) or ERK's densities as logits."""
  scores = criteria.magnitude_scores(params)
  if config.pruning.rl_init == 'uniform':
    return jnp.zeros(len(jax.tree.leaves(scores)), jnp.float32)
  return controller_lib.keep_ratios_logits(
      jax.tree.leaves(select.erk_densities(scores, float(config.sparsity.target_sparsity))))


def check_task(config: ml_collections.ConfigDict) -> None:
  if config.task.name not in TASKS:
    raise ValueError(f"the 'rl' allocation draws its validation tasks from a key stream, which keeps them apart "
                     f'from the evaluation tasks for {", ".join(TASKS)} only; --task={config.task.name} draws '
                     'them from a data split (not supported yet).')


def episode_fn(exp: build_lib.Experiment, controller: controller_lib.Controller):
  """One jitted controller episode: ``(controller_state, dense_state, episode, scores) -> (controller_state,
  metrics)``; ``episode`` is an int32 array, so every episode runs one compilation."""
  @jax.jit
  def run_episode(controller_state, dense_state, episode, scores):
    return controller_lib.episode(controller, reward_fn(exp, dense_state, episode, scores))(controller_state)
  return run_episode


def search(exp: build_lib.Experiment, dense_state: step_lib.MetaState, *, scores=None,
           log=None) -> SearchResult:
  """Runs the controller from ``dense_state`` (module docstring); returns its allocation and history.

  Args:
    exp: a ``baselines.dense_experiment`` (a sinusoid MLP).
    dense_state: the dense state to prune (not modified; it may be donated after this returns).
    scores: the score tree filling each layer's count (None: the dense weights' magnitudes).
    log: optional ``(episode, metrics) -> None`` called after each episode.
  """
  config = exp.config
  check_task(config)
  params = dense_state.meta_params['params']
  budget = budget_for(config, params)
  controller = make_controller(config, budget)
  run_episode = episode_fn(exp, controller)

  controller_state = controller.init(
      jax.random.fold_in(jax.random.key(int(config.seed)), CONTROLLER_KEY_SALT), initial_mean(config, params))
  history = {name: [] for name in ('reward_mean', 'reward_max', 'baseline', 'std', 'allocation', 'candidates',
                                   'rewards')}
  seconds = []
  for episode in range(int(config.pruning.rl_episodes)):
    start = time.perf_counter()
    controller_state, metrics = run_episode(controller_state, dense_state, jnp.asarray(episode, jnp.int32),
                                            scores)
    metrics = jax.device_get(metrics)
    seconds.append(time.perf_counter() - start)
    for name in ('reward_mean', 'reward_max', 'baseline', 'std'):
      history[name].append(float(metrics[f'controller/{name}']))
    for name in ('allocation', 'candidates', 'rewards'):
      key = 'counts' if name == 'candidates' else name
      history[name].append(np.asarray(metrics[f'controller/{key}']).tolist())
    if log is not None:
      log(episode, metrics)
  counts = [int(k) for k in jax.device_get(controller.allocation(controller_state))]
  return SearchResult([path for path, _ in prunable_layers(params)], budget, counts, history, seconds)


def allocation_masks(params, counts, scores=None) -> dict:
  """Masks of ``params`` keeping the ``counts[l]`` highest ``scores`` (default: magnitudes) of prunable layer ``l``."""
  scores = criteria.magnitude_scores(params) if scores is None else scores
  return select.count_masks(scores, jnp.asarray(counts, jnp.int32))


_GATED_RUNS: dict[str, tuple[list[int], dict]] = {}  # l0_gates of a config (JSON), once per process.


def l0_gates(config: ml_collections.ConfigDict) -> tuple[list[int], dict]:
  """The kept counts per prunable layer and the gate logits of ``config`` meta-trained with hard-concrete gates.

  The gated run is ``config`` with ``gates.mask='hard_concrete'`` (the frontier's
  ``hard_concrete`` point of the same seed and target), trained for
  ``outer.num_outer_steps`` meta-steps in memory; a process trains it once per config.

  Returns:
    ``(counts, gate_logits)``: the deterministic gates' nonzero count per layer
    (in ``prunable_layers`` order) and the logit tree (a score tree: ``None`` at biases).
  """
  gated = ml_collections.ConfigDict(config.to_dict())
  gated.gates.mask = 'hard_concrete'
  gated.eval.dense_reference = False
  cache_key = gated.to_json_best_effort(sort_keys=True)
  if cache_key not in _GATED_RUNS:
    exp = build_lib.build(gated)
    state = exp.init_state()
    num_steps, per_call = int(gated.outer.num_outer_steps), int(gated.run.steps_per_call)
    for count, calls in ((per_call, num_steps // per_call), (1, num_steps % per_call)):
      step = exp.make_step(count) if calls else None
      for _ in range(calls):
        state, _ = step(state)
    gate_logits = jax.device_get(state.meta_params['gate_logits'])
    if gated.gates.granularity != 'weight':
      raise ValueError(f"the l0 allocation needs one gate per weight (--config.gates.granularity='weight'), got "
                       f'{gated.gates.granularity!r}.')
    gates = hard_concrete.deterministic_gates(gate_logits, exp.settings.hc)
    counts = [int(np.count_nonzero(np.asarray(g))) for g in jax.tree.leaves(gates)]
    _GATED_RUNS[cache_key] = (counts, gate_logits)
  return _GATED_RUNS[cache_key]


def kept_per_layer(params, masks) -> dict[str, int]:
  """``{layer path: nonzero weights}`` of every prunable kernel of ``params * masks``."""
  effective = masking.apply_masks(params, masks)
  flat, _ = jax.tree_util.tree_flatten_with_path(criteria.magnitude_scores(effective))
  return {_path_name(path): int(np.count_nonzero(np.asarray(leaf))) for path, leaf in flat}


def converged_episode(history: dict, budget: controller_lib.LayerBudget,
                      tolerance: float = CONVERGENCE_TOLERANCE) -> int:
  """The first episode after which the chosen allocation stays within ``tolerance`` of the budget of its final
  value (cost-weighted L1 distance); 1-based, so ``sum(episode_seconds[:e])`` is the wall time to it."""
  allocations = np.asarray(history['allocation'], np.float64)
  costs = np.asarray(budget.costs, np.float64)
  distance = np.abs(allocations - allocations[-1]) @ costs / max(budget.total, 1)
  outside = np.nonzero(distance > tolerance)[0]
  return int(outside[-1]) + 2 if outside.size else 1


def summary(config: ml_collections.ConfigDict, result: SearchResult, params) -> dict:
  """A JSON record: the budget, the chosen and the fixed allocations, the reward curve, the controller's cost."""
  converged = converged_episode(result.history, result.budget)
  return {
      'budget': config.pruning.budget, 'budget_total': result.budget.total, 'layers': result.layers,
      'sizes': list(result.budget.sizes), 'costs': list(result.budget.costs), 'counts': result.counts,
      'reference_allocations': reference_allocations(config, params, result.budget),
      'episodes': len(result.episode_seconds), 'candidates': int(config.pruning.rl_candidates),
      'first_episode_seconds': result.episode_seconds[0],
      'seconds_per_episode': float(np.median(result.episode_seconds[1:] or result.episode_seconds)),
      'search_seconds': float(np.sum(result.episode_seconds)),
      'converged_episode': converged, 'seconds_to_convergence': float(np.sum(result.episode_seconds[:converged])),
      'history': result.history,
  }


def plot_search(path: str, record: dict) -> None:
  """Reward curve (mean, best candidate, baseline) and the chosen keep ratios per layer against the episode."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  history = record['history']
  episodes = np.arange(1, len(history['reward_mean']) + 1)
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  left.plot(episodes, history['reward_mean'], label='mean of candidates')
  left.plot(episodes, history['reward_max'], label='best candidate', alpha=0.6)
  left.plot(episodes, history['baseline'], label='baseline (before update)', ls='--')
  left.axvline(record['converged_episode'], color='k', lw=0.8, ls=':', label='allocation converged')
  left.set_xlabel('episode')
  left.set_ylabel('reward (- validation loss)')
  left.legend(fontsize=8)
  ratios = np.asarray(history['allocation'], np.float64) / np.asarray(record['sizes'], np.float64)
  for i, name in enumerate(record['layers']):
    line, = right.plot(episodes, ratios[:, i], label=name)
    for rule, style in (('uniform', ':'), ('erk', '--')):
      right.axhline(record['reference_allocations'][rule][i] / record['sizes'][i], color=line.get_color(),
                    ls=style, lw=0.8)
  right.set_yscale('log')
  right.set_xlabel('episode')
  right.set_ylabel('keep ratio (dotted: uniform, dashed: ERK)')
  right.legend(fontsize=8)
  fig.suptitle(f"rl allocation, {record['budget']} budget {record['budget_total']}: {record['counts']}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
