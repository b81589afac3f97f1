"""``run(config, workdir)``: meta-train, checkpoint, evaluate, plot. Importable from notebooks.

Outputs in ``workdir``: ``config.json`` (resolved config), ``metrics.jsonl`` (one
JSON line per log step), ``checkpoints/`` (atomic msgpack, the newest few),
``summary.json`` (evaluation with 95% CIs) and ``training.png``. Rerunning with
the same workdir resumes from the newest checkpoint and reproduces the numbers
an uninterrupted run would have given.
"""

import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from experiments import checkpoint
from experiments import mask_analysis
from experiments import monitor
from experiments import ops_config
from experiments import plots
from experiments import problems
from experiments import report
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import l0_objective
from metaprune_jax.meta import evaluate
from metaprune_jax.meta import learners
from metaprune_jax.meta import maml
from metaprune_jax.meta import meta_pruner
from metaprune_jax.meta import sharding
from metaprune_jax.meta import step as meta_step
from metaprune_jax.nets import masked

MASKS = ('hard_concrete', 'meta_pruner', 'none')
ALGORITHMS = learners.LEARNERS


def _require(ok: bool, field: str, value, rule: str) -> None:
  if not ok:
    raise ValueError(f'--config.{field}={value!r} is invalid: {rule}.')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks every field before anything compiles; errors name the flag and the fix."""
  if config.task not in problems.PROBLEMS:
    raise ValueError(f'--task={config.task!r} is unknown; valid tasks: {", ".join(sorted(problems.PROBLEMS))}.')
  _require(config.algorithm in ALGORITHMS, 'algorithm', config.algorithm, f'use one of {ALGORITHMS}')
  for field in ('num_outer_steps', 'meta_batch_size', 'num_shots', 'num_query', 'log_every_steps',
                'checkpoint_every_steps', 'keep_checkpoints', 'eval_num_query'):
    _require(int(config[field]) > 0, field, config[field], 'must be a positive integer')
  _require(int(config.num_inner_steps) > 0, 'num_inner_steps', config.num_inner_steps,
           'must be a positive integer (MAML adapts at least once)')
  _require(int(config.eval_num_tasks) >= 2, 'eval_num_tasks', config.eval_num_tasks,
           'needs at least 2 tasks for a confidence interval')
  for field in ('outer_lr', 'inner_lr', 'gate_lr', 'eval_inner_lr'):
    _require(float(config[field]) > 0, field, config[field], 'must be > 0')
  _require(config.get('outer_lr_schedule', 'constant') in OUTER_LR_SCHEDULES, 'outer_lr_schedule',
           config.get('outer_lr_schedule'), f'use one of {OUTER_LR_SCHEDULES}')
  _require(0.0 <= float(config.get('outer_lr_final_scale', 0.0)) <= 1.0, 'outer_lr_final_scale',
           config.get('outer_lr_final_scale'), 'must be in [0, 1]')
  _require(config.mask in MASKS, 'mask', config.mask, f'use one of {MASKS}')
  _require(config.granularity in hard_concrete.GRANULARITIES, 'granularity', config.granularity,
           f'use one of {hard_concrete.GRANULARITIES}')
  _require(config.gate_noise in ('hash', 'threefry'), 'gate_noise', config.gate_noise, "use 'hash' or 'threefry'")
  _require(config.get('gate_sample_scope', 'task') in maml.GATE_SAMPLE_SCOPES, 'gate_sample_scope',
           config.get('gate_sample_scope'), "use 'task' (a gate sample per task) or 'batch' (one per meta-step)")
  _require(config.hc_beta > 0, 'hc_beta', config.hc_beta, 'must be > 0')
  _require(config.hc_gamma < 0, 'hc_gamma', config.hc_gamma, 'must be < 0 (the stretch below 0)')
  _require(config.hc_zeta > 1, 'hc_zeta', config.hc_zeta, 'must be > 1 (the stretch above 1)')
  _require(len(config.eval_steps) > 0 and all(int(k) >= 0 for k in config.eval_steps), 'eval_steps',
           config.eval_steps, 'must be a non-empty list of inner-step counts >= 0')
  _require(len(config.eval_shots) > 0 and all(int(k) > 0 for k in config.eval_shots), 'eval_shots',
           config.eval_shots, 'must be a non-empty list of positive shot counts')
  _require(0.0 <= config.harden_at_fraction < 1.0, 'harden_at_fraction', config.harden_at_fraction,
           'must be in [0, 1) (0 disables hardening)')
  _require(config.divergence_ratio > 1, 'divergence_ratio', config.divergence_ratio, 'must be > 1')
  l0_objective.validate(_objective(config))
  ops_config.validate(config)


def _objective(config) -> l0_objective.L0Objective:
  return l0_objective.L0Objective(mode=config.sparsity_mode, penalty=float(config.sparsity_penalty),
                                  target_sparsity=float(config.target_sparsity),
                                  loss_budget=float(config.loss_budget), dual_lr=float(config.dual_lr),
                                  warmup_steps=int(config.sparsity_warmup_steps),
                                  quadratic=float(config.sparsity_quadratic))


def _hc(config) -> hard_concrete.HardConcrete:
  return hard_concrete.HardConcrete(float(config.hc_beta), float(config.hc_gamma), float(config.hc_zeta))


def inner_settings(config, *, num_inner_steps=None, inner_lr=None) -> maml.InnerSettings:
  return maml.InnerSettings(
      inner_lr=float(config.inner_lr if inner_lr is None else inner_lr),
      num_inner_steps=int(config.num_inner_steps if num_inner_steps is None else num_inner_steps),
      first_order=bool(config.first_order), adapt_gates=bool(config.adapt_gates),
      inner_gate_lr=float(config.inner_gate_lr), hc=_hc(config), noise=config.gate_noise,
      python_loop=bool(config.get('inner_python_loop', False)),
      task_chunk_size=int(config.get('task_chunk_size', 0)),
      gate_sample_scope=str(config.get('gate_sample_scope', 'task')))


def learner_and_density(config, problem: problems.Problem):
  """The meta-learner named by ``config.algorithm`` and its gate-density function (None: shared gates).

  With ``--config.mask=meta_pruner`` the learner runs every task with its own
  gate logits (``meta_pruner.conditioned_learner``).
  """
  learner = learners.get_learner(config.algorithm, loss_fn=problem.loss_fn, accuracy_fn=problem.accuracy_fn,
                                 embed_fn=problem.embed_fn, head_keys=tuple(problem.head_keys))
  if config.mask != 'meta_pruner':
    return learner, None
  target = float(config.target_sparsity) if config.sparsity_mode == 'target' else None
  return meta_pruner.conditioned_learner(learner, meta_pruner.task_features_fn(problem.embed_fn),
                                         target_sparsity=target, hc=_hc(config))


def learner_for(config, problem: problems.Problem) -> learners.Learner:
  """The meta-learner named by ``config.algorithm`` for ``problem`` (see ``learner_and_density``)."""
  return learner_and_density(config, problem)[0]


def _init_meta_pruner(config, problem: problems.Problem, key, params, gate_logits) -> dict:
  """Meta-pruner parameters sized by one training task's support features."""
  features_fn = meta_pruner.task_features_fn(problem.embed_fn)
  feature_dim = jax.eval_shape(
      lambda k: features_fn(params, jax.tree.map(lambda x: x[0], problem.train_sampler(k, 1))), key).shape[-1]
  return meta_pruner.init_meta_pruner(key, params, gate_logits, feature_dim=int(feature_dim),
                                      hidden_sizes=tuple(config.get('meta_pruner_hidden_sizes', (64, 64))),
                                      embed_dim=int(config.get('meta_pruner_embed_dim', 32)))


OUTER_LR_SCHEDULES = ('constant', 'cosine')


def outer_lr_schedule(config):
  """The weights' outer learning rate: constant, or cosine-decayed to ``outer_lr_final_scale * outer_lr``."""
  if config.get('outer_lr_schedule', 'constant') == 'constant':
    return float(config.outer_lr)
  return optax.cosine_decay_schedule(float(config.outer_lr), int(config.num_outer_steps),
                                     alpha=float(config.outer_lr_final_scale))


def init_state(config, problem: problems.Problem):
  """The initial ``MetaState`` and the outer optimiser for ``config``."""
  key = jax.random.key(config.seed)
  init_key, train_key = jax.random.split(key)
  params = problem.init_params(init_key)
  gate_logits = None
  if config.mask in ('hard_concrete', 'meta_pruner'):
    spec = hard_concrete.default_granularity(config.granularity, tuple(config.dense_layers))
    gate_logits = hard_concrete.init_gate_logits(params, spec, init_logit=float(config.init_logit))
    if hard_concrete.num_gated_weights(params, gate_logits) == 0:
      if 'hidden_unit' in config.granularity:
        raise ValueError(f'--config.granularity={config.granularity!r} gates the hidden units of recurrent nets '
                         f'only; --task={config.task} has none. Use weight, out_unit or in_unit.')
      raise ValueError(f'--config.dense_layers={tuple(config.dense_layers)!r} leaves no layer gated.')
  inner_lrs_lr = config.get('inner_lrs_lr', None)
  optimizer = meta_step.make_outer_optimizer(outer_lr_schedule(config), float(config.gate_lr),
                                             float(config.grad_clip_norm) or None,
                                             None if inner_lrs_lr is None else float(inner_lrs_lr),
                                             float(config.get('meta_pruner_lr', config.gate_lr)))
  extra = learner_for(config, problem).init_extra(params, inner_settings(config))
  if config.mask == 'meta_pruner':
    extra['meta_pruner'] = _init_meta_pruner(config, problem, jax.random.fold_in(init_key, 1), params, gate_logits)
  state = meta_step.init_meta_state(train_key, params, gate_logits, optimizer, float(config.init_multiplier),
                                    extra=extra)
  return state, optimizer


@functools.partial(jax.jit, static_argnames=('hc',))
def _gated_sparsity(params, gate_logits, hc):
  return (1.0 - hard_concrete.expected_density(params, gate_logits, hc),
          hard_concrete.realised_sparsity(params, gate_logits, hc),
          hard_concrete.nonzero_params(params, gate_logits, hc))


def sparsity_report(meta_params, hc: hard_concrete.HardConcrete) -> dict[str, float]:
  """Expected / realised sparsity and parameter counts of the deterministic sparse model."""
  params, gate_logits = meta_params['params'], meta_params.get('gate_logits')
  total = masked.count_params(params)
  if gate_logits is None:
    return {'expected_sparsity': 0.0, 'realised_sparsity': 0.0, 'gated_weights': 0,
            'nonzero_params': total, 'total_params': total}
  expected, realised, nonzero = _gated_sparsity(params, gate_logits, hc)
  report = {
      'expected_sparsity': float(expected),
      'realised_sparsity': float(realised),
      'gated_weights': hard_concrete.num_gated_weights(params, gate_logits),
      'nonzero_params': int(nonzero),
      'total_params': total,
  }
  if (unit_sparsity := hard_concrete.unit_sparsity(gate_logits, hc)) is not None:  # RNN hidden-unit gates.
    report['hidden_unit_sparsity'] = unit_sparsity
  return report


def harden_step(config) -> int | None:
  """The meta-step at which gates are hardened to the target and frozen (None: never)."""
  if config.mask == 'none' or config.sparsity_mode != 'target' or config.harden_at_fraction <= 0:
    return None
  return int(round(config.harden_at_fraction * int(config.num_outer_steps)))


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def _truncate_metrics(path: str, last_step: int) -> None:
  """Drops log lines written after the checkpoint we resume from."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip() and json.loads(line)['step'] <= last_step]
  with open(path, 'w') as f:
    f.writelines(lines)


def train(config, workdir: str, problem: problems.Problem):
  """Meta-trains from scratch or from the newest checkpoint; returns the final state and timings."""
  state, optimizer = init_state(config, problem)
  mesh = sharding.make_mesh(ops_config.get(config, 'num_devices'))
  restored = checkpoint.restore_latest_with_host(state, workdir)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  host_counters = {}
  if restored is not None:
    state, host_counters = restored
    logging.info('Resumed from checkpoint at step %d.', int(state.step))
    _truncate_metrics(metrics_path, int(state.step))
  elif os.path.exists(metrics_path):
    os.remove(metrics_path)
  learner, density = learner_and_density(config, problem)
  state = sharding.replicate(state, mesh)
  guard = monitor.NonfiniteGuard(ops_config.get(config, 'nonfinite'), host_counters.get('skipped_steps', 0))
  events = monitor.EventWriter(os.path.join(workdir, 'tensorboard'), ops_config.get(config, 'tensorboard'),
                               purge_step=int(state.step) + 1 if restored is not None else None)
  step_kwargs = dict(meta_batch_size=int(config.meta_batch_size), settings=inner_settings(config),
                     objective=_objective(config), harden_step=harden_step(config), nonfinite=guard.mode, mesh=mesh,
                     learner=learner, gate_density=density)
  steps_per_call = int(ops_config.get(config, 'steps_per_call'))
  step_fns = {}  # Built on first use: K steps per call, and 1 where a log / checkpoint line is nearer than K.

  def step_fn(count):
    if count not in step_fns:
      step_fns[count] = meta_step.make_meta_step(problem.train_sampler, problem.loss_fn, optimizer,
                                                 steps_per_call=count, **step_kwargs)
    return step_fns[count]

  hc = _hc(config)
  num_steps = int(config.num_outer_steps)
  log_every, checkpoint_every = int(config.log_every_steps), int(config.checkpoint_every_steps)
  # A meta-pruner's tasks each harden their own mask; the progress line can only afford the base logits' one.
  realised_label = 'realised (base logits)' if config.mask == 'meta_pruner' else 'realised'
  start = int(state.step)
  timings = {'compile_seconds': 0.0, 'train_seconds': 0.0, 'start_step': start}
  if start >= num_steps:
    return state, timings

  def run_call(state, done):
    """One jitted call from step ``done``: K steps, or 1 where a log / checkpoint line or the end is nearer.

    Returns the metrics as the step function gave them (each ``[K]`` for K steps);
    the guard records every step's flag.
    """
    boundary = min(num_steps, (done // log_every + 1) * log_every, (done // checkpoint_every + 1) * checkpoint_every)
    count = steps_per_call if boundary - done >= steps_per_call else 1
    state, metrics = step_fn(count)(state)
    guard.record(done + 1, metrics)
    return state, metrics, done + count

  t0 = time.perf_counter()
  state, metrics, step = run_call(state, start)
  jax.block_until_ready(metrics)
  timings['compile_seconds'] = time.perf_counter() - t0  # Includes the first call's steps (1, or K).
  timings['timed_steps'] = num_steps - step  # The steps train_seconds covers.
  last_time, last_step = time.perf_counter(), step
  train_start = last_time
  last_checkpoint = checkpoint.list_checkpoints(workdir)[-1][1] if restored is not None else None
  with open(metrics_path if jax.process_index() == 0 else os.devnull, 'a') as log_file:
    while True:
      is_last = step == num_steps
      if step % log_every == 0 or is_last:
        guard.check(last_checkpoint)
        host = {k: float(np.ravel(v)[-1]) for k, v in jax.device_get(metrics).items() if k != 'outer/nonfinite'}
        now = time.perf_counter()
        rate = (step - last_step) / max(now - last_time, 1e-9) if step > last_step else float('nan')
        last_time, last_step = now, step
        report = sparsity_report(state.meta_params, hc)
        host['mask/realised_sparsity'] = report['realised_sparsity']
        host['outer/skipped_steps'] = guard.skipped_steps
        record = {'step': step, 'steps_per_sec': rate, **host}
        log_file.write(json.dumps(record) + '\n')
        log_file.flush()
        events.write(step, {k: v for k, v in record.items() if k != 'step' and math.isfinite(v)})
        eta = (num_steps - step) / rate if math.isfinite(rate) and rate > 0 else float('nan')
        logging.info('step %d/%d | %.0f steps/s | ETA %s | outer loss %.4f | query %s %.4f | '
                     'sparsity expected %.3f %s %.3f | multiplier %.3g',
                     step, num_steps, rate, _format_duration(eta) if math.isfinite(eta) else '?',
                     host['outer/objective'], 'loss' if problem.metric == 'accuracy' else problem.metric, host['outer/query_loss'],
                     host['mask/expected_sparsity'], realised_label, host['mask/realised_sparsity'],
                     host['mask/multiplier'])
      if step % checkpoint_every == 0 or is_last:
        guard.check(last_checkpoint)  # Never checkpoint a non-finite state.
        last_checkpoint = checkpoint.save(state, workdir, keep=int(config.keep_checkpoints),
                                          host={'skipped_steps': guard.skipped_steps})
      if is_last:
        break
      state, metrics, step = run_call(state, step)
  events.close()
  timings['train_seconds'] = time.perf_counter() - train_start
  timings['skipped_steps'] = guard.skipped_steps
  return state, timings


def held_out_tasks(config, problem: problems.Problem, shots: int, ways: int | None = None):
  """The evaluation tasks for ``shots`` (and ``ways``, classification): keyed off the seed, never
  off the training stream.

  Every run (and every baseline) with the same seed sees the same tasks.
  """
  eval_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 0x5EED), int(shots))
  if ways is None:
    return problem.eval_sampler(eval_key, int(config.eval_num_tasks), int(shots))
  return problem.eval_sampler(jax.random.fold_in(eval_key, int(ways)), int(config.eval_num_tasks), int(shots),
                              ways=int(ways))


def eval_settings(config) -> maml.InnerSettings:
  """Inner-loop settings of every held-out evaluation: ``max(eval_steps)`` steps at ``eval_inner_lr``."""
  max_steps = max(int(k) for k in config.eval_steps)
  settings = inner_settings(config, num_inner_steps=max_steps, inner_lr=float(config.eval_inner_lr))
  return settings._replace(python_loop=False)  # Long traced horizons: the scan compiles faster.


def evaluate_model(config, meta_params, problem: problems.Problem) -> dict:
  """Fresh-task evaluation for every ``eval_shots`` and ``eval_steps``, sparse and gates-off.

  The evaluation tasks come from a key folded off the seed, never from the
  training stream, so every run with the same seed sees the same tasks.

  Classification problems (``config.eval_ways``) are evaluated for every way
  and shot count (keys ``ways_N_shots_K``), with the query accuracy beside the
  loss under ``'<mode>/accuracy'``.
  """
  settings = eval_settings(config)
  modes = ['deterministic', 'off'] if meta_params.get('gate_logits') is not None else ['off']
  names = {'deterministic': 'sparse', 'off': 'gates_off' if len(modes) == 2 else 'dense'}
  learner = learner_for(config, problem)
  steps = [int(k) for k in config.eval_steps]
  results = {}
  for ways in (config.get('eval_ways') or (None,)):
    for shots in config.eval_shots:
      tasks = held_out_tasks(config, problem, shots, ways)
      name = f'shots_{shots}' if ways is None else f'ways_{ways}_shots_{shots}'
      for mode in modes:
        traces = evaluate.learner_traces(learner, meta_params, tasks, settings=settings, gate_mode=mode,
                                         chunk_size=int(config.get('eval_chunk_size', 200)))
        results.setdefault(names[mode], {})[name] = evaluate.summarise_traces(
            traces['loss'], steps, divergence_threshold=float(config.divergence_threshold),
            divergence_ratio=float(config.divergence_ratio))
        if 'accuracy' in traces:
          results.setdefault(f'{names[mode]}/accuracy', {})[name] = evaluate.summarise_accuracy(
              traces['accuracy'], steps)
  return results


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Meta-trains and evaluates ``config`` in ``workdir``; returns (and writes) the summary."""
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  problem = problems.get_problem(config)
  state, timings = train(config, workdir, problem)
  logging.info('Evaluating on %d fresh tasks per shot count ...', config.eval_num_tasks)
  t0 = time.perf_counter()
  results = evaluate_model(config, state.meta_params, problem)
  summary = {
      'task': config.task, 'seed': int(config.seed), 'metric': problem.metric, 'mask': config.mask,
      'num_outer_steps': int(config.num_outer_steps), 'eval_num_tasks': int(config.eval_num_tasks),
      'eval_inner_lr': float(config.eval_inner_lr), 'divergence_threshold': float(config.divergence_threshold),
      'divergence_ratio': float(config.divergence_ratio),
      'ci': '95% normal interval over non-diverged tasks: 1.96 * std / sqrt(n)',
      'diverged': 'query loss non-finite, > divergence_threshold, or > divergence_ratio x its loss before adapting',
      'sparsity': sparsity_report(state.meta_params, _hc(config)),
      'timings': {**timings, 'eval_seconds': time.perf_counter() - t0},
      'eval': results,
  }
  if config.mask == 'meta_pruner':  # Task-conditioned masks: per-task sparsity, distances, cost.
    summary['meta_pruner'] = mask_analysis.analyse(config, state.meta_params, problem)
    summary['sparsity']['realised_sparsity'] = summary['meta_pruner']['realised_sparsity']['mean']
    summary['sparsity']['nonzero_params'] = int(round(summary['sparsity']['total_params'] - summary['sparsity'][
        'realised_sparsity'] * summary['sparsity']['gated_weights']))
    summary['sparsity']['note'] = ('meta_pruner: realised sparsity and nonzero params are means over held-out '
                                   "tasks of each task's hardened mask (see 'meta_pruner')")
    mask_analysis.plot(summary['meta_pruner'], os.path.join(workdir, 'task_masks.png'))
  if 'structure' in summary.get('meta_pruner', {}):  # Each task prunes its own net: mean over held-out tasks.
    summary['structure'] = summary['meta_pruner']['structure']
  elif problem.flops_fn is not None:  # Realised weight / channel sparsity and FLOPs of the pruned network.
    gate_logits = state.meta_params.get('gate_logits')
    gates = None if gate_logits is None else hard_concrete.deterministic_gates(gate_logits, _hc(config))
    summary['structure'] = problem.flops_fn(state.meta_params['params'], gates)
  if timings['train_seconds'] > 0 and timings.get('timed_steps', 0) > 0:
    summary['timings']['steps_per_sec'] = timings['timed_steps'] / timings['train_seconds']
  if config.mask != 'none' and config.get('dense_reference', False):
    dense = ml_collections.ConfigDict(config.to_dict())
    dense.mask, dense.dense_reference = 'none', False
    logging.info('Meta-training the dense reference with the same budget ...')
    summary['dense_reference'] = run(dense, os.path.join(workdir, 'dense_reference'))
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  plots.training_curves(os.path.join(workdir, 'metrics.jsonl'), os.path.join(workdir, 'training.png'),
                        title=f'{config.task} | mask={config.mask} | seed={config.seed}')
  report.write_report(workdir, summary, config)
  logging.info('%s', format_summary(summary))
  return summary


def format_summary(summary: dict) -> str:
  """A human-readable table of the evaluation (mean +- 95% CI, median, diverged)."""
  lines = [f"task={summary['task']} seed={summary['seed']} eval tasks={summary['eval_num_tasks']} "
           f"realised sparsity={summary['sparsity']['realised_sparsity']:.3f} "
           f"nonzero params={summary['sparsity']['nonzero_params']}/{summary['sparsity']['total_params']}"]
  def add(name, results):
    metric = summary['metric'] if summary['metric'] != 'accuracy' else 'loss'
    metric = 'accuracy' if name.endswith('/accuracy') else metric
    for shots, by_step in results.items():
      for step, s in by_step.items():
        lines.append(f"  {name:<16} {shots:<8} {step:<8} {metric} {s['mean']:.4f} +- {s['ci95']:.4f}"
                     f"  median {s['median']:.4f}  diverged {s['num_diverged']}/{s['num_tasks']}")
  for name, results in summary['eval'].items():
    add(name, results)
  if 'dense_reference' in summary:
    for name, results in summary['dense_reference']['eval'].items():
      add('dense_reference', results)
  return '\n'.join(lines)
