"""The value rules of every config section; each error names the flag and the fix.

``validate_objective`` checks the sparsity section once ``build`` has made its
``L0Objective``.

``validate(config)`` runs from ``build.build`` after ``config_check`` has
checked the field names and types, before anything is loaded or compiled. Task
fields that need the data to check (ways against the classes of a split, shots
against the drawers) are checked where the problem is built (``problems``).
"""

import math
import os

import ml_collections

from experiments import config_check
from experiments import problems
from experiments.config_check import require
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import harden as harden_lib
from metaprune_jax.masks import l0_objective
from metaprune_jax.masks import sparsity as sparsity_lib
from metaprune_jax.meta import guards
from metaprune_jax.meta import learners
from metaprune_jax.meta import meta_pruner
from metaprune_jax.meta.settings import GATE_SAMPLE_SCOPES
from metaprune_jax.meta.settings import NOISE_KINDS
from metaprune_jax.nets import conv
from metaprune_jax.nets import mlp
from metaprune_jax.pruning import controller
from metaprune_jax.pruning import select

MASKS = ('hard_concrete', 'meta_pruner', 'none')
OUTER_LR_SCHEDULES = ('constant', 'cosine')


def _is_count(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _positive_counts(section: ml_collections.ConfigDict, name: str, fields) -> None:
  for field in fields:
    require(_is_count(section[field]) and section[field] > 0, f'{name}.{field}', section[field],
            'must be a positive integer')


def _positive_rates(section: ml_collections.ConfigDict, name: str, fields) -> None:
  for field in fields:
    value = float(section[field])
    require(math.isfinite(value) and value > 0, f'{name}.{field}', section[field], 'must be a finite number > 0')


def validate_task_and_model(config: ml_collections.ConfigDict) -> None:
  require(config.task.name in problems.PROBLEMS, 'task.name', config.task.name,
          f'use one of {sorted(problems.PROBLEMS)} (--task=NAME)')
  require(_is_count(config.seed) and config.seed >= 0, 'seed', config.seed, 'must be an integer >= 0')
  num_seeds = config.get('num_seeds', 1)
  require(_is_count(num_seeds) and num_seeds >= 1, 'num_seeds', num_seeds,
          'must be an integer >= 1 (seeds seed .. seed + num_seeds - 1 meta-train together)')
  if num_seeds > 1:
    require(int(config.run.num_devices) == 1, 'num_seeds', num_seeds,
            f'stacks the seeds on one device: set --config.run.num_devices=1 (not {config.run.num_devices})')
  _positive_counts(config.task, 'task', problems.episode_fields(config))
  for field in ('amplitude_range', 'phase_range', 'input_range'):
    if field in config.task:
      value = tuple(config.task[field])
      require(len(value) == 2 and float(value[0]) <= float(value[1]), f'task.{field}', value,
              'must be a (low, high) pair with low <= high')
  model = config.model
  if 'activation' in model:
    require(model.activation in mlp.ACTIVATIONS, 'model.activation', model.activation,
            f'use one of {sorted(mlp.ACTIVATIONS)}')
  if 'hidden_sizes' in model:
    require(all(int(w) > 0 for w in model.hidden_sizes), 'model.hidden_sizes', tuple(model.hidden_sizes),
            'every layer width must be a positive integer')
  if 'kernel_init_std' in model:
    require(float(model.kernel_init_std) >= 0, 'model.kernel_init_std', model.kernel_init_std,
            'must be >= 0 (0: LeCun normal)')
  if 'bn_mode' in config:  # Nets with batch norm (the omniglot configs).
    require(config.bn_mode in conv.BN_MODES, 'bn_mode', config.bn_mode,
            "use 'transductive' (query images normalised together) or 'inductive' (with the support set's "
            'statistics)')


def validate_outer_and_inner(config: ml_collections.ConfigDict) -> None:
  require(config.algorithm in learners.LEARNERS, 'algorithm', config.algorithm, f'use one of {learners.LEARNERS}')
  outer, inner = config.outer, config.inner
  _positive_counts(outer, 'outer', ('num_outer_steps', 'meta_batch_size'))
  _positive_rates(outer, 'outer', ('outer_lr', 'inner_lrs_lr'))
  require(outer.outer_lr_schedule in OUTER_LR_SCHEDULES, 'outer.outer_lr_schedule', outer.outer_lr_schedule,
          f'use one of {OUTER_LR_SCHEDULES}')
  require(0.0 <= float(outer.outer_lr_final_scale) <= 1.0, 'outer.outer_lr_final_scale',
          outer.outer_lr_final_scale, 'must be in [0, 1]')
  require(math.isfinite(float(outer.grad_clip_norm)) and float(outer.grad_clip_norm) >= 0, 'outer.grad_clip_norm',
          outer.grad_clip_norm, 'must be a finite number >= 0 (0 disables clipping)')
  require(_is_count(inner.num_inner_steps) and inner.num_inner_steps > 0, 'inner.num_inner_steps',
          inner.num_inner_steps, 'must be a positive integer (MAML adapts at least once)')
  _positive_rates(inner, 'inner', ('inner_lr', 'inner_gate_lr'))
  for field in ('first_order', 'adapt_gates'):
    require(isinstance(inner[field], bool), f'inner.{field}', inner[field], 'must be True or False')


def validate_gates_and_sparsity(config: ml_collections.ConfigDict) -> None:
  gates, sparsity = config.gates, config.sparsity
  require(gates.mask in MASKS, 'gates.mask', gates.mask, f'use one of {MASKS}')
  require(gates.granularity in hard_concrete.GRANULARITIES, 'gates.granularity', gates.granularity,
          f'use one of {hard_concrete.GRANULARITIES}')
  _positive_rates(gates, 'gates', ('gate_lr', 'meta_pruner_lr', 'hc_beta', 'meta_pruner_modulation_gain'))
  require(gates.hc_gamma < 0, 'gates.hc_gamma', gates.hc_gamma, 'must be < 0 (the stretch below 0)')
  require(gates.hc_zeta > 1, 'gates.hc_zeta', gates.hc_zeta, 'must be > 1 (the stretch above 1)')
  require(math.isfinite(float(gates.init_logit)), 'gates.init_logit', gates.init_logit, 'must be finite')
  require(all(int(w) > 0 for w in gates.meta_pruner_hidden_sizes), 'gates.meta_pruner_hidden_sizes',
          tuple(gates.meta_pruner_hidden_sizes), 'every width must be a positive integer')
  _positive_counts(gates, 'gates', ('meta_pruner_embed_dim',))
  require(gates.meta_pruner_embedding in meta_pruner.EMBEDDINGS, 'gates.meta_pruner_embedding',
          gates.meta_pruner_embedding, f'use one of {meta_pruner.EMBEDDINGS}')
  count = sparsity.get('count', 'weights')  # A task registered without a config file may lack the field.
  require(count in sparsity_lib.COUNTS, 'sparsity.count', count, f'use one of {sparsity_lib.COUNTS}')
  require(count == 'weights' or gates.mask != 'meta_pruner', 'sparsity.count', count,
          "the meta-pruner counts weights; use --config.sparsity.count=weights or --config.gates.mask=hard_concrete")
  require(count == 'weights' or 'hidden_unit' not in gates.granularity, 'sparsity.count', count,
          "hidden-unit gates remove overlapping weights and are counted by weight; use --config.sparsity.count=weights")
  scope = sparsity.get('harden_scope', 'global')
  require(scope in harden_lib.SCOPES, 'sparsity.harden_scope', scope, f'use one of {harden_lib.SCOPES}')
  require(scope == 'global' or (gates.mask != 'meta_pruner' and 'hidden_unit' not in gates.granularity),
          'sparsity.harden_scope', scope, "layerwise hardening is for shared gates without hidden-unit gates; use "
          "--config.sparsity.harden_scope=global")
  require(0.0 <= sparsity.harden_at_fraction < 1.0, 'sparsity.harden_at_fraction', sparsity.harden_at_fraction,
          'must be in [0, 1) (0 disables hardening)')


def validate_objective(objective: l0_objective.L0Objective) -> None:
  """``l0_objective.validate`` with its messages naming the fields in their section (``config.sparsity``)."""
  try:
    l0_objective.validate(objective)
  except ValueError as e:
    raise ValueError(str(e).replace('--config.', '--config.sparsity.')) from None


def validate_eval(config: ml_collections.ConfigDict) -> None:
  evals = config.eval
  require(_is_count(evals.num_tasks) and evals.num_tasks >= 2, 'eval.num_tasks', evals.num_tasks,
          'needs at least 2 tasks for a confidence interval')
  _positive_counts(evals, 'eval', ('num_query', 'chunk_size'))
  _positive_rates(evals, 'eval', ('inner_lr',))
  require(len(evals.steps) > 0 and all(int(k) >= 0 for k in evals.steps), 'eval.steps', evals.steps,
          'must be a non-empty list of inner-step counts >= 0')
  require(len(evals.shots) > 0 and all(int(k) > 0 for k in evals.shots), 'eval.shots', evals.shots,
          'must be a non-empty list of positive shot counts')
  require(all(int(k) > 0 for k in evals.ways), 'eval.ways', evals.ways, 'must be positive class counts')
  require(float(evals.divergence_threshold) > 0, 'eval.divergence_threshold', evals.divergence_threshold,
          'must be > 0 (a query loss above it counts as diverged)')
  require(evals.divergence_ratio > 1, 'eval.divergence_ratio', evals.divergence_ratio, 'must be > 1')
  require(isinstance(evals.dense_reference, bool), 'eval.dense_reference', evals.dense_reference,
          'must be True or False')
  protocol = evals.get('protocol', 'mixed')  # A task registered without a config file may lack the field.
  require(protocol in problems.EVAL_PROTOCOLS, 'eval.protocol', protocol, f'use one of {problems.EVAL_PROTOCOLS}')
  require(protocol == 'mixed' or config.task.name == 'omniglot', 'eval.protocol', protocol,
          f"only --task=omniglot has alphabets to draw within-alphabet episodes from; use 'mixed' for "
          f'--task={config.task.name}')


def validate_execution_and_run(config: ml_collections.ConfigDict) -> None:
  execution, run = config.execution, config.run
  require(execution.gate_noise in NOISE_KINDS, 'execution.gate_noise', execution.gate_noise,
          f'use one of {NOISE_KINDS}')
  require(execution.gate_sample_scope in GATE_SAMPLE_SCOPES, 'execution.gate_sample_scope',
          execution.gate_sample_scope, "use 'task' (a gate sample per task) or 'batch' (one per meta-step)")
  require(_is_count(execution.task_chunk_size) and execution.task_chunk_size >= 0, 'execution.task_chunk_size',
          execution.task_chunk_size, 'must be an integer >= 0 (0: the whole batch at once)')
  if execution.task_chunk_size > 0:
    require(int(config.outer.meta_batch_size) % execution.task_chunk_size == 0, 'execution.task_chunk_size',
            execution.task_chunk_size, f'must divide --config.outer.meta_batch_size={config.outer.meta_batch_size}')
  _positive_counts(run, 'run', ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints', 'steps_per_call'))
  require(_is_count(run.num_devices) and run.num_devices >= 0, 'run.num_devices', run.num_devices,
          'must be an integer >= 0 (0 = every device)')
  if run.num_devices > 1:
    require(int(config.outer.meta_batch_size) % run.num_devices == 0, 'run.num_devices', run.num_devices,
            f'must divide --config.outer.meta_batch_size={config.outer.meta_batch_size} (the task batch is split '
            'evenly across devices)')
  require(run.nonfinite in guards.NONFINITE_MODES, 'run.nonfinite', run.nonfinite,
          f'use one of {guards.NONFINITE_MODES}')
  for field in ('distributed', 'tensorboard'):
    require(isinstance(run[field], bool), f'run.{field}', run[field], 'must be True or False')
  require(_is_count(run.max_skipped_steps) and run.max_skipped_steps >= 1, 'run.max_skipped_steps',
          run.max_skipped_steps, 'must be an integer >= 1 (a run skipping more non-finite updates stops)')
  fraction = run.max_skipped_fraction
  require(not isinstance(fraction, bool) and isinstance(fraction, (int, float)) and 0.0 <= fraction <= 1.0,
          'run.max_skipped_fraction', fraction, 'must be a number in [0, 1] (1: no limit on the share skipped)')
  require(all(isinstance(p, str) for p in run.allow_changes), 'run.allow_changes', tuple(run.allow_changes),
          "must be a tuple of dotted config fields, e.g. ('outer.num_outer_steps',)")
  known = config_check.leaf_paths(config)
  for path in run.allow_changes:
    if path not in known:
      raise config_check.ConfigError(config_check.unknown_field_message(path, sorted(known)).replace(
          '--config.', '--config.run.allow_changes: ', 1))


def validate_pruning(config: ml_collections.ConfigDict) -> None:
  """The baselines' fields (``config.pruning``)."""
  pruning = config.pruning
  require(pruning.prune_scope in select.SCOPES, 'pruning.prune_scope', pruning.prune_scope,
          f'use one of {select.SCOPES}')
  require(pruning.prune_distribution in select.DISTRIBUTIONS, 'pruning.prune_distribution',
          pruning.prune_distribution, f'use one of {select.DISTRIBUTIONS}')
  require(pruning.prune_distribution == 'uniform' or pruning.prune_scope == 'layerwise',
          'pruning.prune_distribution', pruning.prune_distribution,
          "'erk' sets per-layer sparsities: use it with --config.pruning.prune_scope=layerwise")
  require(0.0 <= float(pruning.finetune_dense_fraction) < 1.0, 'pruning.finetune_dense_fraction',
          pruning.finetune_dense_fraction, 'must be in [0, 1) (the share of the budget trained dense before pruning)')
  _positive_counts(pruning, 'pruning', ('snip_num_tasks', 'gradual_update_every_steps', 'imp_cycles'))
  require(0.0 <= float(pruning.imp_rewind_fraction) <= float(pruning.finetune_dense_fraction),
          'pruning.imp_rewind_fraction', pruning.imp_rewind_fraction,
          'must be in [0, pruning.finetune_dense_fraction] (weights are rewound to a point of the dense phase)')
  begin, end = float(pruning.gradual_begin_fraction), float(pruning.gradual_end_fraction)
  require(0.0 <= begin < end, 'pruning.gradual_begin_fraction', begin, 'must be >= 0 and below gradual_end_fraction')
  require(end <= 1.0, 'pruning.gradual_end_fraction', end, 'must be <= 1 (the target is reached inside the budget)')
  require(pruning.budget in controller.BUDGETS, 'pruning.budget', pruning.budget,
          f"use one of {controller.BUDGETS} (the rl allocation's global budget: kept weights or forward FLOPs)")
  _positive_counts(pruning, 'pruning', ('rl_episodes', 'rl_finetune_steps', 'rl_validation_tasks'))
  require(_is_count(pruning.rl_candidates) and pruning.rl_candidates >= 2, 'pruning.rl_candidates',
          pruning.rl_candidates, 'must be an integer >= 2 (REINFORCE compares the candidates of an episode)')
  _positive_rates(pruning, 'pruning', ('rl_lr', 'rl_init_std'))
  require(pruning.rl_init in select.DISTRIBUTIONS, 'pruning.rl_init', pruning.rl_init,
          f'use one of {select.DISTRIBUTIONS} (the allocation the policy starts from)')
  require(0.0 <= float(pruning.rl_baseline_decay) < 1.0, 'pruning.rl_baseline_decay', pruning.rl_baseline_decay,
          'must be in [0, 1)')
  require(_is_count(pruning.rl_min_kept) and pruning.rl_min_kept >= 0, 'pruning.rl_min_kept', pruning.rl_min_kept,
          'must be an integer >= 0 (the fewest weights a layer keeps)')


def validate_distill(config: ml_collections.ConfigDict) -> None:
  """Distillation (``config.distill``): a weight in [0, 1], a positive temperature, a teacher run when used."""
  distill = config.distill
  weight = float(distill.weight)
  require(math.isfinite(weight) and 0.0 <= weight <= 1.0, 'distill.weight', distill.weight,
          "must be in [0, 1] (the teacher's share of the query targets; 0 disables distillation)")
  require(math.isfinite(float(distill.temperature)) and float(distill.temperature) > 0, 'distill.temperature',
          distill.temperature, 'must be a positive number')
  if weight > 0:
    require(bool(distill.teacher) and os.path.isfile(os.path.join(distill.teacher, 'config.json')),
            'distill.teacher', distill.teacher, 'must be a run folder of the same task (it has a config.json): '
            'train the teacher first, e.g. the dense run with --config.gates.mask=none')


def validate(config: ml_collections.ConfigDict) -> None:
  """Every section's value rules, in the order of the config."""
  validate_task_and_model(config)
  validate_outer_and_inner(config)
  validate_gates_and_sparsity(config)
  validate_eval(config)
  validate_execution_and_run(config)
  validate_pruning(config)
  validate_distill(config)
