"""The ``rl`` allocation: a policy-gradient controller picks per-layer kept counts under a global budget.

``search(exp, state)`` runs ``pruning.rl_episodes`` episodes of the REINFORCE
controller of ``metaprune_jax.pruning.controller`` from a dense meta-trained
state (the ``rl`` baseline calls it where ``magnitude_finetune`` prunes). One
episode, one ``jax.jit`` (or a host loop of jitted pieces, below):

1. the controller samples ``pruning.rl_candidates`` allocations on the budget
   (``pruning.budget``: ``'params'``, the kept kernel weights of
   ``sparsity.target_sparsity``, or ``'flops'``, effective forward FLOPs at most
   ``1 - target_sparsity`` of the dense net's; at least ``pruning.rl_min_kept``
   weights per layer);
2. every candidate (``vmap``) keeps the largest-magnitude weights of each
   layer (``select.count_masks``), takes ``pruning.rl_finetune_steps`` meta-steps
   of the run's own step (learner, optimiser state, meta-batch) under its mask,
   and adapts to ``pruning.rl_validation_tasks`` fresh **validation** tasks; its
   reward is the mean query accuracy (classification, ``problem.metric ==
   'accuracy'``) or minus the mean query loss (regression; each task's loss
   capped at ``eval.divergence_threshold``) after the ``eval.steps`` inner steps:
   higher is better either way (``CandidateReward``);
3. one REINFORCE step with a moving-average baseline.

An allocation has one count per prunable kernel (``criteria.default_prunable``,
tree-flatten order, e.g. ``conv_0 ... conv_3, head``); a layer named in
``gates.dense_layers`` (Omniglot's head, which a ProtoNet never uses) keeps all
its weights (its lower bound is its size), as in the gated runs and the other
baselines. A FLOPs budget costs a kernel weight its forward FLOPs
(``flops.weight_costs``: 2 for a Dense weight, ``2 * s * s`` for a Conv-4 weight
with ``s x s`` output pixels), so ``flops.conv4_flops`` / ``mlp_flops`` of a
mask built from an allocation are the budget's accounting to the FLOP.

All candidates of an episode share the fine-tune and validation tasks (common
random numbers: rewards differ by allocation only). The validation tasks come
from ``VALIDATION_KEY_SALT`` folded off the seed, never from the evaluation key
(``evaluation.EVAL_KEY_SALT``), and the fine-tune tasks from
``FINETUNE_KEY_SALT``, apart from the training stream. Omniglot draws them from
the **validation characters** (``task.split_sizes``) whatever ``eval.split``; with
``eval.split='validation'`` the evaluation episodes are other episodes of the same
characters (a selection on the evaluation characters: report final numbers at
``eval.split='test'``). The candidates run in one ``vmap`` inside the episode's
jit, or, where the net's convolution is the native one (``host_loop``: the dense
ProtoNet), one at a time by a host loop of jitted fine-tune steps; validation
tasks are adapted ``eval.chunk_size`` at a time. The controller's choice is the
projection of its policy mean after the last episode.

``l0_gates(config)`` meta-trains the hard-concrete gates of ``config`` (same
seed, budget and target; hardened at ``sparsity.harden_at_fraction``) and gives
the per-layer kept counts they learned and their logits: the ``l0`` baseline
fills those counts by magnitude; ``rl_l0_fill``, ``erk_l0_fill`` and
``l0_l0_fill`` fill the controller's, ERK's and the gates' own counts by the gate
logits instead of the magnitudes.
"""

import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import build as build_lib
from experiments import problems as problems_lib
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
KEY_STREAM_TASKS = ('sinusoid',)  # Validation tasks from a key stream (no data split to keep apart).
SPLIT_TASKS = ('omniglot',)       # Validation tasks from the validation split of the data.
TASKS = KEY_STREAM_TASKS + SPLIT_TASKS
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
    reward: what the reward is, ``'accuracy'`` or ``'-loss'`` (higher is better either way).
  """
  layers: list[str]
  budget: controller_lib.LayerBudget
  counts: list[int]
  history: dict
  episode_seconds: list[float]
  reward: str = '-loss'


def _path_name(path) -> str:
  """``'Dense_0/kernel'`` of a pytree path."""
  return '/'.join(str(getattr(entry, 'key', entry)) for entry in path)


def prunable_layers(params) -> list[tuple[str, int]]:
  """``(path, size)`` of every prunable kernel (``criteria.default_prunable``), in tree-flatten order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(criteria.magnitude_scores(params))
  return [(_path_name(path), int(np.size(leaf))) for path, leaf in flat]


def kept_whole(config: ml_collections.ConfigDict, params) -> list[bool]:
  """Per prunable layer: whether it is in ``gates.dense_layers`` (kept whole by every allocation)."""
  dense_layers = set(config.gates.dense_layers)
  return [path.split('/')[0] in dense_layers for path, _ in prunable_layers(params)]


def pruned_scores(config: ml_collections.ConfigDict, params) -> criteria.ScoreTree:
  """``criteria.magnitude_scores`` of the layers an allocation prunes (``None`` at ``gates.dense_layers``)."""
  dense_layers = set(config.gates.dense_layers)
  scores = criteria.magnitude_scores(params)
  return {name: jax.tree.map(lambda _: None, layer) if name in dense_layers else layer
          for name, layer in scores.items()}


def image_size(config: ml_collections.ConfigDict, params) -> int | None:
  """The Conv-4 input side (``task.image_size``) for ``flops.weight_costs``; None for an MLP."""
  return int(config.task.image_size) if 'conv_0' in params else None


def budget_for(config: ml_collections.ConfigDict, params) -> controller_lib.LayerBudget:
  """The ``LayerBudget`` of ``pruning.budget`` at ``sparsity.target_sparsity`` for ``params`` (an MLP or a Conv-4).

  ``'params'`` keeps ``topk_masks``' count of the pruned layers' weights, plus the
  whole layers; ``'flops'`` spends at most ``1 - target_sparsity`` of the dense
  forward FLOPs of ``flops.mlp_flops`` / ``conv4_flops`` (``flops.weight_costs``).
  Layers in ``gates.dense_layers`` keep every weight (``min_kept`` = size).
  """
  layers = prunable_layers(params)
  sizes = [size for _, size in layers]
  sparsity, pruning = float(config.sparsity.target_sparsity), config.pruning
  if pruning.budget not in controller_lib.BUDGETS:
    raise ValueError(f'--config.pruning.budget={pruning.budget!r} is invalid: use one of {controller_lib.BUDGETS}.')
  whole = kept_whole(config, params)
  if all(whole):
    raise ValueError(f'--config.gates.dense_layers={tuple(config.gates.dense_layers)!r} keeps every prunable layer '
                     'whole; the allocation has nothing to prune.')
  min_kept = [n if w else min(int(pruning.rl_min_kept), n) for n, w in zip(sizes, whole)]
  if pruning.budget == 'params':
    pruned = sum(n for n, w in zip(sizes, whole) if not w)
    kept = pruned - min(int(np.floor(sparsity * pruned + 0.5)), pruned)  # select.topk_masks' count.
    return controller_lib.layer_budget(sizes, (1,) * len(sizes), kept + sum(sizes) - pruned, min_kept=min_kept)
  costs, fixed_flops = flops.weight_costs(params, image_size=image_size(config, params))
  return controller_lib.flops_budget(sizes, [costs[path] for path, _ in layers], sparsity, fixed_flops=fixed_flops,
                                     min_kept=min_kept)


def erk_densities(config: ml_collections.ConfigDict, params) -> list[float]:
  """ERK's density per prunable layer at ``sparsity.target_sparsity`` over the pruned layers (whole layers: 1)."""
  densities = iter(jax.tree.leaves(select.erk_densities(pruned_scores(config, params),
                                                        float(config.sparsity.target_sparsity))))
  return [1.0 if w else next(densities) for w in kept_whole(config, params)]


def erk_counts(config: ml_collections.ConfigDict, params) -> list[int]:
  """ERK's kept weights per prunable layer on ``pruning.budget``.

  ``'params'``: the counts of ``magnitude_masks(..., scope='layerwise',
  distribution='erk')`` at ``sparsity.target_sparsity`` over the pruned layers
  (as ``baselines.gated_layer_masks`` applies it). ``'flops'``: ERK's densities as
  logits (``controller.keep_ratios_logits``) projected onto the FLOPs budget
  (for small densities ``sigmoid(logit + shift) ~ e^shift * density``: ERK with its
  scale chosen to spend the FLOPs); it is also where ``rl_init='erk'`` starts.
  Layers in ``gates.dense_layers`` keep every weight.
  """
  densities = erk_densities(config, params)
  if config.pruning.budget == 'flops':
    budget = budget_for(config, params)
    return [int(k) for k in controller_lib.project(controller_lib.keep_ratios_logits(densities), budget)]
  sparsity = float(config.sparsity.target_sparsity)
  erk = iter(jax.tree.leaves(select.layer_sparsities(pruned_scores(config, params), sparsity, 'erk')))
  return [n if w else n - min(int(np.floor(next(erk) * n + 0.5)), n)
          for (_, n), w in zip(prunable_layers(params), kept_whole(config, params))]


def reference_allocations(config: ml_collections.ConfigDict, params,
                          budget: controller_lib.LayerBudget) -> dict[str, list[int]]:
  """The fixed rules beside the controller: ``uniform`` (equal keep ratios on ``budget``) and ``erk``."""
  return {'uniform': [int(k) for k in controller_lib.project(jnp.zeros(len(budget.sizes)), budget)],
          'erk': erk_counts(config, params)}


_VALIDATION_SAMPLERS: dict[str, object] = {}  # validation_sampler of a data-split config (JSON), once per process.


def validation_sampler(config: ml_collections.ConfigDict, problem):
  """The ``eval_sampler`` the reward's tasks come from: ``problem``'s own for a key-stream task or at
  ``eval.split='validation'``, else that of the problem rebuilt on the validation split (data loaded once)."""
  if config.task.name in KEY_STREAM_TASKS or config.eval.split == 'validation':
    return problem.eval_sampler
  validation = ml_collections.ConfigDict(config.to_dict())
  validation.eval.split = 'validation'
  cache_key = validation.to_json_best_effort(sort_keys=True)
  if cache_key not in _VALIDATION_SAMPLERS:
    with jax.ensure_compile_time_eval():  # Called inside the episode's jit: the images must stay concrete arrays.
      _VALIDATION_SAMPLERS[cache_key] = problems_lib.PROBLEMS[config.task.name](validation).eval_sampler
  return _VALIDATION_SAMPLERS[cache_key]


def validation_tasks(config: ml_collections.ConfigDict, problem, episode):
  """The reward's ``pruning.rl_validation_tasks`` tasks of ``episode`` (may be traced), at ``eval.shots[0]`` (and
  ``eval.ways[0]``, classification), from ``validation_sampler``.

  Keyed by ``VALIDATION_KEY_SALT`` off the seed, then the shot count (and ways)
  and the episode: a stream apart from the evaluation tasks' (``evaluation.held_out_tasks``).
  """
  shots, ways = int(config.eval.shots[0]), tuple(config.eval.ways)
  sampler, num_tasks = validation_sampler(config, problem), int(config.pruning.rl_validation_tasks)
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(int(config.seed)), VALIDATION_KEY_SALT), shots)
  if not ways:
    return sampler(jax.random.fold_in(key, episode), num_tasks, shots)
  key = jax.random.fold_in(key, int(ways[0]))
  return sampler(jax.random.fold_in(key, episode), num_tasks, shots, ways=int(ways[0]))


def finetune_key(config: ml_collections.ConfigDict, episode):
  """The key of the candidates' fine-tune tasks in ``episode``."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(int(config.seed)), FINETUNE_KEY_SALT), episode)


def host_loop(config: ml_collections.ConfigDict) -> bool:
  """Whether candidates are fine-tuned by a host loop of jitted meta-steps: where the net's convolution is the
  native one (``problems.conv_method``), since XLA:CPU runs a conv's gradient inside a loop (``lax.scan`` /
  ``lax.map``) ~20x slower than the same jitted step called from Python, and a ``vmap`` over per-candidate
  weights would make it a grouped convolution."""
  return config.task.name in SPLIT_TASKS and problems_lib.conv_method(config) == 'conv'


class CandidateReward(NamedTuple):
  """The pieces of a candidate's reward (pure, jittable), composed by ``reward_fn`` or a host loop.

  Attributes:
    prepare: ``(dense_state, counts [L], scores, episode) -> state``: the dense state under the candidate's mask
      (pruned weights zeroed), keyed for the episode's fine-tune tasks.
    step: ``state -> state``: one fine-tune meta-step (the run's own step).
    score: ``(state, tasks) -> reward``: mean query accuracy, or minus the mean capped query loss, after the
      ``eval.steps`` inner steps.
  """
  prepare: Callable
  step: Callable
  score: Callable


def candidate_reward(exp: build_lib.Experiment) -> CandidateReward:
  """The ``CandidateReward`` of ``exp`` (a ``dense_experiment``; module docstring)."""
  config = exp.config
  meta_step = step_lib.make_meta_step(exp.problem.train_sampler, exp.learner, exp.optimizer,
                                      meta_batch_size=int(config.outer.meta_batch_size), settings=exp.settings,
                                      gates=exp.gates, objective=exp.objective, harden_step=exp.harden_step)
  steps = jnp.asarray([int(k) for k in config.eval.steps])
  cap, accuracy = float(config.eval.divergence_threshold), exp.problem.metric == 'accuracy'
  tasks_per_call = max(1, min(int(config.eval.chunk_size), int(config.pruning.rl_validation_tasks)))

  def prepare(dense_state, counts, scores, episode):
    masks = select.count_masks(scores, counts)
    params = masking.apply_masks(dense_state.meta_params['params'], masks)
    return dense_state._replace(meta_params={**dense_state.meta_params, 'params': params},
                                key=finetune_key(config, episode), masks=masks)

  def step(state):
    return meta_step(state)[0]

  def score(state, tasks):
    traces = jax.lax.map(lambda task: exp.eval_learner.task_traces(
        state.meta_params, task, settings=exp.eval_settings, gate_mode='off', fixed_masks=state.masks),
                         tasks, batch_size=tasks_per_call)  # {'loss'[, 'accuracy']: [tasks, max(eval.steps) + 1]}
    if accuracy:
      return jnp.mean(traces['accuracy'][:, steps])
    losses = jnp.minimum(jnp.nan_to_num(traces['loss'][:, steps], nan=cap, posinf=cap), cap)
    return -jnp.mean(losses)

  return CandidateReward(prepare, step, score)


def reward_fn(exp: build_lib.Experiment, dense_state: step_lib.MetaState, episode, scores=None):
  """``counts [C, L] -> rewards [C]`` of ``exp`` (a ``dense_experiment``) from ``dense_state`` (module docstring).

  Pure and jittable, the candidates in one ``vmap``; ``episode`` (may be traced) picks the fine-tune and
  validation tasks; ``scores`` (a score tree, default the dense weights' magnitudes) picks the kept weights inside
  each layer. The reward is higher for a better candidate: the mean query accuracy, or minus the mean (capped)
  query loss.
  """
  parts = candidate_reward(exp)
  num_steps = int(exp.config.pruning.rl_finetune_steps)
  scores = criteria.magnitude_scores(dense_state.meta_params['params']) if scores is None else scores
  tasks = validation_tasks(exp.config, exp.problem, episode)

  def one(counts):
    state = parts.prepare(dense_state, counts, scores, episode)
    state, _ = jax.lax.scan(lambda s, _: (parts.step(s), None), state, None, length=num_steps)
    return parts.score(state, tasks)

  return jax.vmap(one, in_axes=(0,))


def host_reward_fn(exp: build_lib.Experiment):
  """``(dense_state, episode, scores, counts [C, L]) -> rewards [C]``: ``reward_fn``'s rewards by a host loop over
  candidates and fine-tune steps of jitted pieces (``host_loop``); ``scores=None``: the dense magnitudes."""
  parts = candidate_reward(exp)
  num_steps = int(exp.config.pruning.rl_finetune_steps)
  prepare, step, score = jax.jit(parts.prepare), jax.jit(parts.step), jax.jit(parts.score)

  def rewards(dense_state, episode, scores, counts):
    scores = criteria.magnitude_scores(dense_state.meta_params['params']) if scores is None else scores
    tasks = validation_tasks(exp.config, exp.problem, episode)
    out = []
    for candidate in counts:
      state = prepare(dense_state, candidate, scores, episode)
      for _ in range(num_steps):
        state = step(state)
      out.append(score(state, tasks))
    return jnp.stack(out)

  return rewards


def make_controller(config: ml_collections.ConfigDict,
                    budget: controller_lib.LayerBudget) -> controller_lib.Controller:
  """The REINFORCE controller of the ``pruning.rl_*`` fields on ``budget`` (Adam on the policy)."""
  pruning = config.pruning
  return controller_lib.reinforce(budget, optax.adam(float(pruning.rl_lr)),
                                  num_candidates=int(pruning.rl_candidates), init_std=float(pruning.rl_init_std),
                                  baseline_decay=float(pruning.rl_baseline_decay))


def initial_mean(config: ml_collections.ConfigDict, params) -> jax.Array:
  """The policy mean at start: equal logits (``rl_init='uniform'``) or ERK's densities as logits."""
  if config.pruning.rl_init == 'uniform':
    return jnp.zeros(len(prunable_layers(params)), jnp.float32)
  return controller_lib.keep_ratios_logits(erk_densities(config, params))


def check_task(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming ``--task`` unless the reward can draw validation tasks apart from the evaluation's."""
  if config.task.name not in TASKS:
    raise ValueError(f"the 'rl' allocation draws its validation tasks from a key stream "
                     f"({', '.join(KEY_STREAM_TASKS)}) or a validation split ({', '.join(SPLIT_TASKS)}); "
                     f'--task={config.task.name} has neither wired (not supported yet).')


def episode_fn(exp: build_lib.Experiment, controller: controller_lib.Controller):
  """One controller episode: ``(controller_state, dense_state, episode, scores) -> (controller_state, metrics)``.

  One ``jax.jit`` (``episode`` is an int32 array, so every episode runs one compilation), or, where
  ``host_loop``, jitted proposal and update around ``host_reward_fn`` (the same metrics).
  """
  if not host_loop(exp.config):
    @jax.jit
    def run_episode(controller_state, dense_state, episode, scores):
      return controller_lib.episode(controller, reward_fn(exp, dense_state, episode, scores))(controller_state)
    return run_episode

  rewards_of = host_reward_fn(exp)
  propose, update, allocation = jax.jit(controller.propose), jax.jit(controller.update), jax.jit(controller.allocation)

  def run_host_episode(controller_state, dense_state, episode, scores):
    controller_state, logits, counts = propose(controller_state)
    rewards = rewards_of(dense_state, episode, scores, counts)
    controller_state, metrics = update(controller_state, logits, rewards)
    return controller_state, {**metrics, 'controller/counts': counts, 'controller/rewards': rewards,
                              'controller/allocation': allocation(controller_state)}
  return run_host_episode


def search(exp: build_lib.Experiment, dense_state: step_lib.MetaState, *, scores=None,
           log=None) -> SearchResult:
  """Runs the controller from ``dense_state`` (module docstring); returns its allocation and history.

  Args:
    exp: a ``baselines.dense_experiment`` (the sinusoid MLP or the Omniglot Conv-4).
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
  return SearchResult([path for path, _ in prunable_layers(params)], budget, counts, history, seconds,
                      'accuracy' if exp.problem.metric == 'accuracy' else '-loss')


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
    (in ``prunable_layers`` order; at ``pruning.budget='flops'`` their keep ratios
    projected onto the FLOPs budget, as ``erk_counts`` does ERK's: the gates train
    to a parameter target) and the logit tree (a score tree: ``None`` at biases); a kernel the gates
    leave dense (``gates.dense_layers``) counts in full with zero scores.
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
    prunable = criteria.magnitude_scores(state.meta_params['params'])
    # Kernels the gates leave dense (gates.dense_layers) keep every weight: a zero score tree and a full count.
    gates = jax.tree.map(lambda p, g: None if p is None else (jnp.ones_like(p) if g is None else g),
                         prunable, gates, is_leaf=lambda x: x is None)
    gate_logits = jax.tree.map(lambda p, g: None if p is None else (np.zeros(p.shape, np.float32) if g is None else g),
                               prunable, gate_logits, is_leaf=lambda x: x is None)
    counts = [int(np.count_nonzero(np.broadcast_to(np.asarray(g), p.shape)))
              for g, p in zip(jax.tree.leaves(gates), jax.tree.leaves(prunable))]
    if gated.pruning.budget == 'flops':  # The gates' keep ratios as logits, projected onto the FLOPs budget.
      params = state.meta_params['params']
      ratios = [k / n for k, (_, n) in zip(counts, prunable_layers(params))]
      budget = budget_for(gated, params)
      counts = [int(k) for k in controller_lib.project(controller_lib.keep_ratios_logits(ratios), budget)]
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
      'budget': config.pruning.budget, 'budget_total': result.budget.total, 'reward': result.reward,
      'layers': result.layers,
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
  left.set_ylabel('reward (validation accuracy)' if record.get('reward') == 'accuracy'
                  else 'reward (- validation loss)')
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
