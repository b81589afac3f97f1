"""``build(config) -> Experiment``: the one place a config field is read and validated.

Every entry point — ``train.run``, the pruning baselines, the frontier, mask
analysis, evaluation of a saved run and the benchmarks — goes through
``build``, so a field (``--config.algorithm`` included) means the same thing
for every method. The sections map onto library types:

    task, model, execution -> problems.Problem (samplers, net, losses)
    inner                  -> settings.InnerSettings
    execution              -> settings.Execution
    algorithm              -> learner.Learner (learners.get_learner)
    gates                  -> gate_source.GateSource, the initial gate logits
    sparsity               -> l0_objective.L0Objective and the hardening step
    outer                  -> the optax outer optimiser
    eval                   -> evaluate(meta_params)
    run                    -> the jitted step (steps per call, non-finite policy, devices)
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import ml_collections
import optax

from experiments import config_check
from experiments import evaluation
from experiments import export_spec
from experiments import problems
from experiments import validation
from metaprune_jax import checkpoint
from metaprune_jax.export import model as export_model
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import l0_objective
from metaprune_jax.masks import masking
from metaprune_jax.masks import sparsity as sparsity_lib
from metaprune_jax.meta import distill as distill_lib
from metaprune_jax.meta import gate_source
from metaprune_jax.meta import learners
from metaprune_jax.meta import meta_pruner
from metaprune_jax.meta import optimizer as optimizer_lib
from metaprune_jax.meta import reptile
from metaprune_jax.meta import sharding
from metaprune_jax.meta import step as step_lib
from metaprune_jax.meta.learner import Learner
from metaprune_jax.meta.settings import Execution
from metaprune_jax.meta.settings import InnerSettings


class Experiment(NamedTuple):
  """What a config builds.

  Attributes:
    config: the validated config.
    problem: samplers, net and losses of the task.
    learner: the algorithm bound to the gate source (training execution).
    eval_learner: the same for evaluation (inner loop as a ``lax.scan``).
    gates: the gate source (``no_gates`` when ``gates.mask='none'``).
    settings: inner-loop settings of meta-training.
    eval_settings: inner-loop settings of evaluation (``eval.inner_lr``, ``max(eval.steps)`` steps).
    execution: how steps run.
    objective: the L0 objective.
    optimizer: the outer optimiser.
    harden_step: the meta-step at which gates are hardened (None: never).
    mesh: the device mesh of the task batch (None: one device).
    init_state: ``(seed=None) -> MetaState`` (keyed off ``seed``, by default ``config.seed``).
    make_step: ``(steps_per_call, *, donate=True, stacked_seeds=False) -> jitted step`` (``stacked_seeds``: of a
      ``step.stack_seeds`` state, ``experiments.seeds``).
    evaluate: ``(meta_params, fixed_masks=None) -> results`` on the held-out tasks.
    sparsity_report: ``(meta_params) -> dict`` of sparsity counters.
  """
  config: ml_collections.ConfigDict
  problem: problems.Problem
  learner: Learner
  eval_learner: Learner
  gates: gate_source.GateSource
  settings: InnerSettings
  eval_settings: InnerSettings
  execution: Execution
  objective: l0_objective.L0Objective
  optimizer: optax.GradientTransformation
  harden_step: int | None
  mesh: jax.sharding.Mesh | None
  init_state: Callable
  make_step: Callable
  evaluate: Callable
  sparsity_report: Callable


def hard_concrete_constants(config) -> hard_concrete.HardConcrete:
  return hard_concrete.HardConcrete(float(config.gates.hc_beta), float(config.gates.hc_gamma),
                                    float(config.gates.hc_zeta))


def inner_settings(config) -> InnerSettings:
  return InnerSettings(inner_lr=float(config.inner.inner_lr), num_inner_steps=int(config.inner.num_inner_steps),
                       first_order=bool(config.inner.first_order), adapt_gates=bool(config.inner.adapt_gates),
                       inner_gate_lr=float(config.inner.inner_gate_lr), hc=hard_concrete_constants(config))


def execution_settings(config) -> Execution:
  section = config.execution
  return Execution(python_loop=bool(section.python_loop), noise=str(section.gate_noise),
                   task_chunk_size=int(section.task_chunk_size), gate_sample_scope=str(section.gate_sample_scope),
                   conv_method=str(section.get('conv_method', 'auto')))


def l0(config) -> l0_objective.L0Objective:
  section = config.sparsity
  return l0_objective.L0Objective(mode=section.sparsity_mode, penalty=float(section.sparsity_penalty),
                                  target_sparsity=float(section.target_sparsity),
                                  loss_budget=float(section.loss_budget), dual_lr=float(section.dual_lr),
                                  warmup_steps=int(section.sparsity_warmup_steps),
                                  quadratic=float(section.sparsity_quadratic))


def harden_step(config) -> int | None:
  """The meta-step at which gates are hardened to the target and frozen (None: never)."""
  section = config.sparsity
  if config.gates.mask == 'none' or section.sparsity_mode != 'target' or section.harden_at_fraction <= 0:
    return None
  return int(round(section.harden_at_fraction * int(config.outer.num_outer_steps)))


def outer_lr(config):
  """The weights' outer learning rate: constant, or cosine-decayed to ``outer_lr_final_scale * outer_lr``."""
  section = config.outer
  if section.outer_lr_schedule == 'constant':
    return float(section.outer_lr)
  return optax.cosine_decay_schedule(float(section.outer_lr), int(section.num_outer_steps),
                                     alpha=float(section.outer_lr_final_scale))


def reptile_update(config) -> str:
  """``outer.reptile_update`` (``'adam'`` for a config without the field: a task registered without a config file)."""
  return str(config.outer.get('reptile_update', 'adam'))


def check_reptile_update(config) -> None:
  """The rules of ``outer.reptile_update`` and its step sizes (``meta.reptile.UPDATES``).

  Raises:
    ValueError: an unknown update; ``'interpolate'`` for an algorithm other than reptile, or with the
      ``'budget'`` sparsity mode (which scales the Reptile direction by the multiplier); a step size that is not
      finite, or an initial one <= 0 or a final one < 0.
  """
  update, outer = reptile_update(config), config.outer
  config_check.require(update in reptile.UPDATES, 'outer.reptile_update', update, f'use one of {reptile.UPDATES}')
  if update != 'interpolate':
    return
  config_check.require(config.algorithm == 'reptile', 'outer.reptile_update', update,
                       "it is Reptile's outer update (theta + eps (mean adapted - theta)) and "
                       f"--config.algorithm={config.algorithm} has no Reptile direction; use "
                       "--config.algorithm=reptile or --config.outer.reptile_update='adam'")
  config_check.require(config.gates.mask == 'none' or config.sparsity.sparsity_mode != 'budget',
                       'outer.reptile_update', update,
                       "--config.sparsity.sparsity_mode='budget' multiplies the query loss, and with it the Reptile "
                       "direction, by the Lagrange multiplier; use sparsity_mode 'target' or 'penalty', or "
                       "--config.outer.reptile_update='adam'")
  initial, final = float(outer.reptile_step_size), float(outer.reptile_step_size_final)
  config_check.require(math.isfinite(initial) and initial > 0, 'outer.reptile_step_size', outer.reptile_step_size,
                       'must be a finite number > 0 (the paper: 1.0)')
  config_check.require(math.isfinite(final) and final >= 0, 'outer.reptile_step_size_final',
                       outer.reptile_step_size_final, 'must be a finite number >= 0 (the paper: 0.0)')


def outer_optimizer(config) -> optax.GradientTransformation:
  """Adam with a learning rate per meta-parameter group (``meta.optimizer.outer_optimizer``).

  With ``outer.reptile_update='interpolate'`` the weights instead take plain SGD steps at the linearly annealed
  ``outer.reptile_step_size`` (``meta.reptile``): ``outer_lr``, its schedule and ``grad_clip_norm`` apply to the
  other groups only.
  """
  check_reptile_update(config)
  interpolate = reptile_update(config) == 'interpolate'
  params_lr = (reptile.interpolation_step_size(config.outer.reptile_step_size, config.outer.reptile_step_size_final,
                                               int(config.outer.num_outer_steps)) if interpolate else outer_lr(config))
  gate_lr = float(config.gates.gate_lr)
  return optimizer_lib.outer_optimizer(
      {'params': params_lr, 'gate_logits': gate_lr, 'meta_pruner': float(config.gates.meta_pruner_lr),
       'inner_lrs': float(config.outer.inner_lrs_lr)},
      grad_clip_norm=float(config.outer.grad_clip_norm) or None, sgd_groups=('params',) if interpolate else ())


def gates_for(config, problem: problems.Problem) -> gate_source.GateSource:
  """The gate source ``gates.mask`` names."""
  mask, hc = config.gates.mask, hard_concrete_constants(config)
  target = float(config.sparsity.target_sparsity) if config.sparsity.sparsity_mode == 'target' else None
  if mask == 'none':
    return gate_source.no_gates()
  if mask == 'hard_concrete':
    return gate_source.shared_gates(hc, target_sparsity=target, expand_units=problem.expand_units,
                                    count=config.sparsity.get('count', 'weights'),
                                    harden_scope=config.sparsity.get('harden_scope', 'global'))
  embedding = config.gates.meta_pruner_embedding
  return meta_pruner.meta_pruner_gates(meta_pruner.task_features_fn(problem.embed_fn, embedding=embedding), hc,
                                       target_sparsity=target, expand_units=problem.expand_units, embedding=embedding,
                                       modulation_gain=float(config.gates.meta_pruner_modulation_gain))


def bn_mode(config) -> str:
  """``config.bn_mode``: ``'transductive'`` (also for a task without the field: no batch norm) or ``'inductive'``."""
  return str(config.get('bn_mode', 'transductive'))


def learner_for(config, problem: problems.Problem, execution: Execution) -> Learner:
  """The algorithm ``config.algorithm`` names, built for ``problem`` (inductive with ``bn_mode='inductive'``)."""
  return learners.get_learner(config.algorithm, loss_fn=problem.loss_fn, accuracy_fn=problem.accuracy_fn,
                              embed_fn=problem.embed_fn, head_keys=tuple(problem.head_keys), execution=execution,
                              inductive=bn_mode(config) == 'inductive')


def initial_gate_logits(config, problem: problems.Problem, params):
  """The gate-logit tree of ``gates.granularity`` (None for a dense model); refuses a tree with no gate."""
  if config.gates.mask == 'none':
    return None
  spec = hard_concrete.default_granularity(config.gates.granularity, tuple(config.gates.dense_layers))
  logits = hard_concrete.init_gate_logits(params, spec, init_logit=float(config.gates.init_logit))
  if sparsity_lib.num_gated_weights(params, logits, expand_units=problem.expand_units) == 0:
    if 'hidden_unit' in config.gates.granularity:
      raise ValueError(f'--config.gates.granularity={config.gates.granularity!r} gates the hidden units of '
                       f'recurrent nets only; --task={config.task.name} has none. Use weight, out_unit or in_unit.')
    raise ValueError(f'--config.gates.dense_layers={tuple(config.gates.dense_layers)!r} leaves no layer gated.')
  return logits


def initial_state(config, problem: problems.Problem, learner: Learner, settings: InnerSettings,
                  optimizer: optax.GradientTransformation, seed: int | None = None) -> step_lib.MetaState:
  """The initial ``MetaState``: weights, gate logits and the learner's and meta-pruner's groups.

  ``seed``: keys the state instead of ``config.seed`` (one of ``seeds.seed_list(config)``).
  """
  init_key, train_key = jax.random.split(jax.random.key(int(config.seed if seed is None else seed)))
  params = problem.init_params(init_key)
  gate_logits = initial_gate_logits(config, problem, params)
  extra = learner.init_extra(params, settings)
  if config.gates.mask == 'meta_pruner':
    features_fn = meta_pruner.task_features_fn(problem.embed_fn)
    feature_dim = jax.eval_shape(
        lambda k: features_fn(params, jax.tree.map(lambda x: x[0], problem.train_sampler(k, 1))), init_key).shape[-1]
    extra['meta_pruner'] = meta_pruner.init_meta_pruner(
        jax.random.fold_in(init_key, 1), params, gate_logits, feature_dim=int(feature_dim),
        hidden_sizes=tuple(config.gates.meta_pruner_hidden_sizes), embed_dim=int(config.gates.meta_pruner_embed_dim))
  return step_lib.init_meta_state(train_key, params, gate_logits, optimizer, float(config.sparsity.init_multiplier),
                                  extra=extra)


def teacher_for(config):
  """The distillation teacher's one-task prediction (``meta.distill.TeacherPredict``) from ``distill.teacher``.

  The teacher run is loaded as it was trained: its learner adapts with its own
  ``inner`` settings; a gated teacher runs with its deterministic gates.

  Raises:
    ValueError: the teacher is of another task, a meta-pruner run, or a learner
      whose outputs do not match the student's (prototype logits vs a head).
  """
  teacher = checkpoint.load_run(config.distill.teacher)
  teacher_config = teacher.config
  config_check.fill_missing(teacher_config)
  where = f'--config.distill.teacher={config.distill.teacher}'
  if teacher_config.task.name != config.task.name:
    raise ValueError(f'{where} is a {teacher_config.task.name} run; the student is {config.task.name}.')
  if teacher_config.gates.mask == 'meta_pruner':
    raise ValueError(f'{where} is a meta_pruner run; use a dense or hard_concrete teacher.')
  if (teacher_config.algorithm == 'protonet') != (config.algorithm == 'protonet'):
    raise ValueError(f'{where} is a {teacher_config.algorithm} run; a {config.algorithm} student needs a teacher '
                     'with the same outputs (prototype logits, or a head): '
                     f"{'protonet' if config.algorithm == 'protonet' else 'any head-based learner'}.")
  spec = export_spec.model_spec(teacher_config, inner='train')
  params = teacher.meta_params['params']
  if teacher.meta_params.get('gate_logits') is not None:
    params = masking.apply_masks(params, hard_concrete.deterministic_gates(teacher.meta_params['gate_logits'],
                                                                         hard_concrete_constants(teacher_config)))
  params = jax.tree.map(jax.numpy.asarray, params)
  return export_model.predict_fn(spec, params, None, teacher.meta_params.get('inner_lrs'))


def with_distillation(config, problem: problems.Problem) -> problems.Problem:
  """``problem`` whose meta-training tasks carry the teacher's soft query targets (``distill.weight > 0``)."""
  if float(config.distill.weight) <= 0:
    return problem
  sampler = distill_lib.distilled_sampler(problem.train_sampler, teacher_for(config),
                                          float(config.distill.weight), regression=problem.metric == 'mse',
                                          temperature=float(config.distill.temperature))
  return problem._replace(train_sampler=sampler)


def check(config: ml_collections.ConfigDict) -> None:
  """Checks every field's name, type and value (no data is read, nothing touches a device).

  Raises:
    ValueError: naming the first invalid field and the fix (``config_check.ConfigError`` for a field that
      does not exist or has the wrong type).
  """
  config_check.check_config(config)
  validation.validate(config)
  validation.validate_objective(l0(config))
  check_reptile_update(config)


def build(config: ml_collections.ConfigDict) -> Experiment:
  """Checks ``config`` (``check``) and builds its experiment (nothing is compiled or trained here)."""
  check(config)
  execution = execution_settings(config)
  problem = with_distillation(config, problems.get_problem(config))
  gates = gates_for(config, problem)
  settings = inner_settings(config)
  eval_settings = settings._replace(inner_lr=float(config.eval.inner_lr),
                                    num_inner_steps=max(int(k) for k in config.eval.steps))
  base_learner = learner_for(config, problem, execution)
  learner = gates.bind(base_learner, False)
  # Evaluation horizons are long: the inner loop is a lax.scan there, whatever execution.python_loop says.
  eval_learner = gates.bind(learner_for(config, problem, execution._replace(python_loop=False)), False)
  optimizer, objective, hardening = outer_optimizer(config), l0(config), harden_step(config)
  mesh = sharding.make_mesh(int(config.run.num_devices))

  def make_step(steps_per_call: int = 1, *, donate: bool = True, stacked_seeds: bool = False):
    step = step_lib.make_meta_step(problem.train_sampler, base_learner, optimizer,
                                   meta_batch_size=int(config.outer.meta_batch_size), settings=settings, gates=gates,
                                   objective=objective, harden_step=hardening, mesh=mesh)
    return step_lib.compile_step(step, steps_per_call=steps_per_call, nonfinite=config.run.nonfinite, mesh=mesh,
                                 donate=donate, stacked_seeds=stacked_seeds)

  def evaluate(meta_params, fixed_masks=None) -> dict:
    return evaluation.evaluate(config, problem, eval_learner, eval_settings, meta_params, fixed_masks=fixed_masks)

  def sparsity_report(meta_params) -> dict:
    return evaluation.sparsity_report(meta_params, settings.hc, expand_units=problem.expand_units)

  return Experiment(config, problem, learner, eval_learner, gates, settings, eval_settings, execution, objective,
                    optimizer, hardening, mesh, lambda seed=None: initial_state(config, problem, base_learner, settings, optimizer, seed),
                    make_step, evaluate, sparsity_report)


def load(workdir: str, *, data_dir: str | None = None,
         overrides: dict | None = None) -> tuple[Experiment, step_lib.MetaState]:
  """The experiment of the run in ``workdir`` (its ``config.json``) and its newest checkpoint's state.

  Args:
    workdir: a folder written by ``python -m experiments.maml_prune``.
    data_dir: replaces ``task.data_dir`` (the data is read only to rebuild the problem).
    overrides: ``{dotted config path: value}`` applied before building, e.g.
      ``{'eval.split': 'test'}``; fields that change training are the caller's to refuse.

  Raises:
    FileNotFoundError: no ``config.json`` or no checkpoint in ``workdir``.
    ConfigError: an override names no field of the run's config or has the wrong type.
  """
  run = checkpoint.load_run(workdir)
  config = run.config
  config_check.fill_missing(config)  # A run saved before a field existed gets its default.
  if data_dir:
    config.task.data_dir = data_dir
  if overrides:
    config_check.apply_overrides(config, overrides)
  exp = build(config)
  state = checkpoint.restore_latest(exp.init_state(), workdir)
  return exp, state
