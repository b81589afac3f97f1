"""``run(config, workdir)``: build, meta-train, checkpoint, evaluate, report. Importable from notebooks.

Outputs in ``workdir``: ``config.json`` (resolved config), ``model_spec.json`` (what
``metaprune_jax.load_run`` predicts with), ``metrics.jsonl`` (one
JSON line per log step), ``checkpoints/`` (atomic, the newest few),
``summary.json`` (evaluation with 95% CIs), ``training.png`` and ``report.md``.
Rerunning with the same workdir resumes from the newest checkpoint and
reproduces the numbers an uninterrupted run would have given.

``workdir`` may be a local folder or a URI (``gs://bucket/run``; ``experiments.workdir`` says what holds where).
On a multi-host run every process trains, evaluates and takes part in checkpointing (orbax coordinates the
writes); only process 0 writes the run's other files.
"""

import contextlib
import json
import math
import os
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from experiments import build as build_lib
from experiments import export_spec
from metaprune_jax import checkpoint
from experiments import mask_analysis
from experiments import monitor
from experiments import plots
from experiments import provenance
from experiments import report
from experiments import seeds as seeds_lib
from experiments import workdir as workdir_lib
from metaprune_jax import run as run_lib
from metaprune_jax.export import model as export_model
from metaprune_jax.masks import hard_concrete
from metaprune_jax.meta import sharding
from metaprune_jax.meta import step as step_lib

# ``progress(step, record)`` is called at every log step with the ``metrics.jsonl`` record of that step.
Progress = Callable[[int, dict], None]


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'


def _restore(exp: build_lib.Experiment, workdir: str, metrics_path: str):
  """The initial state, or the newest checkpoint's (metrics after it dropped); ``(state, host, restored)``."""
  state = exp.init_state()
  restored = checkpoint.restore_latest_with_host(state, workdir)
  writes = jax.process_index() == 0  # The run's files are process 0's.
  if restored is not None:
    state, host = restored
    logging.info('Resumed from checkpoint at step %d.', int(state.step))
    if writes:
      workdir_lib.truncate_metrics(metrics_path, int(state.step))
    return state, host, True
  if writes:
    epath.Path(metrics_path).unlink(missing_ok=True)
  return state, {}, False


def _progress_text(exp: build_lib.Experiment, step: int, rate: float, host: dict) -> str:
  """The progress line of a log step (the launcher logs it; a Python caller sees it printed)."""
  config, problem = exp.config, exp.problem
  num_steps = int(config.outer.num_outer_steps)
  eta = (num_steps - step) / rate if math.isfinite(rate) and rate > 0 else float('nan')
  # A meta-pruner's tasks each harden their own mask; the progress line can only afford the base logits' one.
  realised_label = 'realised (base logits)' if config.gates.mask == 'meta_pruner' else 'realised'
  eta_text = _format_duration(eta) if math.isfinite(eta) else '?'
  metric = 'loss' if problem.metric == 'accuracy' else problem.metric
  return (f"step {step}/{num_steps} | {rate:.0f} steps/s | ETA {eta_text} | outer loss {host['outer/objective']:.4f}"
          f" | query {metric} {host['outer/query_loss']:.4f} | sparsity expected {host['mask/expected_sparsity']:.3f}"
          f" {realised_label} {host['mask/realised_sparsity']:.3f} | multiplier {host['mask/multiplier']:.3g}")


def _log_line(exp: build_lib.Experiment, step: int, rate: float, host: dict, progress: Progress | None) -> None:
  """Logs the progress line; hands the step's record to ``progress``, or prints the line where absl would not
  show it (a notebook or a script: absl logs INFO only once a launcher's ``app.run`` parsed its flags)."""
  text = _progress_text(exp, step, rate, host)
  logging.info('%s', text)
  if progress is not None:
    progress(step, {'step': step, 'steps_per_sec': rate, **host})
  elif not logging.level_info() and jax.process_index() == 0:
    print(text, flush=True)


def _host_metrics(metrics: dict, config: ml_collections.ConfigDict) -> dict[str, float]:
  """The last step's metrics as floats; with stacked seeds the mean over seeds, each seed's as ``NAME/seed_S``."""
  seeds = seeds_lib.seed_list(config)
  host = {}
  for name, value in metrics.items():
    if name == 'outer/nonfinite':
      continue
    if len(seeds) == 1:
      host[name] = float(np.ravel(value)[-1])
      continue
    values = seeds_lib.per_seed_values(value, len(seeds))
    host[name] = float(np.mean(values))
    host.update({f'{name}/seed_{seed}': float(v) for seed, v in zip(seeds, values)})
  return host


def quiet(step: int, record: dict) -> None:
  """A ``progress`` callback that shows nothing (the absl log lines stay)."""
  del step, record


def train(exp: build_lib.Experiment, workdir: str, resumed: tuple | None = None, *,
          progress: Progress | None = None):
  """Meta-trains from scratch or from the newest checkpoint; returns the final state and timings.

  ``resumed``: ``_restore``'s result when the caller restored already. Timings sum every segment of a resumed run
  (the totals so far ride in each checkpoint's host dict). ``progress``: as in ``run``.
  """
  config = exp.config
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  state, host_counters, restored = resumed or _restore(exp, workdir, metrics_path)
  state = sharding.replicate(state, exp.mesh)
  guard = monitor.NonfiniteGuard(config.run.nonfinite, host_counters.get('skipped_steps', 0),
                                 max_skipped=int(config.run.max_skipped_steps),
                                 max_skipped_fraction=float(config.run.max_skipped_fraction))
  events = monitor.EventWriter(os.path.join(workdir, 'tensorboard'), config.run.tensorboard,
                               purge_step=int(state.step) + 1 if restored else None)
  steps_per_call = int(config.run.steps_per_call)
  step_fns = {}  # Built on first use: K steps per call, and 1 where a log / checkpoint line is nearer than K.
  num_steps = int(config.outer.num_outer_steps)
  log_every, checkpoint_every = int(config.run.log_every_steps), int(config.run.checkpoint_every_steps)
  start = int(state.step)
  timings = {'compile_seconds': float(host_counters.get('compile_seconds', 0.0)),
             'train_seconds': float(host_counters.get('train_seconds', 0.0)),
             'timed_steps': int(host_counters.get('timed_steps', 0)), 'start_step': start,
             'segments': int(host_counters.get('segments', 0)) + 1, 'skipped_steps': guard.skipped_steps}
  prior_seconds, prior_steps = timings['train_seconds'], timings['timed_steps']
  if start >= num_steps:
    return state, timings

  def run_call(state, done):
    """One jitted call from step ``done``: K steps, or 1 where a log / checkpoint line or the end is nearer."""
    boundary = min(num_steps, (done // log_every + 1) * log_every, (done // checkpoint_every + 1) * checkpoint_every)
    count = steps_per_call if boundary - done >= steps_per_call else 1
    if count not in step_fns:
      step_fns[count] = exp.make_step(count)
    state, metrics = step_fns[count](state)
    guard.record(done + 1, metrics)
    return state, metrics, done + count

  t0 = time.perf_counter()
  state, metrics, step = run_call(state, start)
  jax.block_until_ready(metrics)
  timings['compile_seconds'] += time.perf_counter() - t0  # Includes the first call's steps (1, or K).
  last_time, last_step = time.perf_counter(), step
  train_start, first_timed = last_time, step  # train_seconds covers the steps after the first call of a segment.

  def totals(at_step: int) -> dict:
    return {'skipped_steps': guard.skipped_steps, 'compile_seconds': timings['compile_seconds'],
            'train_seconds': prior_seconds + time.perf_counter() - train_start,
            'timed_steps': prior_steps + at_step - first_timed, 'segments': timings['segments']}
  last_checkpoint = checkpoint.list_checkpoints(workdir)[-1][1] if restored else None
  # A failed write (disk full) raises where it happens, naming the file.
  with workdir_lib.metrics_log(metrics_path, enabled=jax.process_index() == 0) as append_metrics:
    while True:
      is_last = step == num_steps
      if step % log_every == 0 or is_last:
        guard.check(last_checkpoint)
        host = _host_metrics(jax.device_get(metrics), exp.config)
        now = time.perf_counter()
        rate = (step - last_step) / max(now - last_time, 1e-9) if step > last_step else float('nan')
        last_time, last_step = now, step
        host['mask/realised_sparsity'] = exp.sparsity_report(state.meta_params)['realised_sparsity']
        host['outer/skipped_steps'] = guard.skipped_steps
        record = {'step': step, 'steps_per_sec': rate, **host}
        append_metrics(json.dumps(record) + '\n')
        events.write(step, {k: v for k, v in record.items() if k != 'step' and math.isfinite(v)})
        _log_line(exp, step, rate, host, progress)
      if step % checkpoint_every == 0 or is_last:
        guard.check(last_checkpoint)  # Never checkpoint a non-finite state.
        last_checkpoint = checkpoint.save(state, workdir, keep=int(config.run.keep_checkpoints),
                                          host=totals(step))
      if is_last:
        break
      state, metrics, step = run_call(state, step)
  events.close()
  timings.update(totals(num_steps))
  return state, timings


def summarise(exp: build_lib.Experiment, state, timings: dict, workdir: str, started: float | None = None) -> dict:
  """Evaluation, sparsity, structure and timings of a trained state, as ``summary.json`` holds them.

  ``started``: when this run (segment) began, a ``time.time()`` stamp for the provenance.
  """
  config, problem = exp.config, exp.problem
  logging.info('Evaluating on %d fresh tasks per shot count ...', config.eval.num_tasks)
  t0 = time.perf_counter()
  results = exp.evaluate(state.meta_params)
  summary = {
      'task': config.task.name, 'seed': int(config.seed), 'algorithm': config.algorithm, 'metric': problem.metric,
      'mask': config.gates.mask, 'num_outer_steps': int(config.outer.num_outer_steps),
      'eval_num_tasks': int(config.eval.num_tasks), 'eval_inner_lr': float(config.eval.inner_lr),
      'divergence_threshold': float(config.eval.divergence_threshold),
      'divergence_ratio': float(config.eval.divergence_ratio),
      'bn_mode': config.get('bn_mode'),  # Batch norm on query sets (configs/omniglot.py); None: a net without it.
      # Which held-out episodes: the split, how an episode picks its classes, how the split was made (None: no
      # dataset split, e.g. sinusoid).
      'eval_split': config.eval.split, 'eval_protocol': config.eval.protocol, 'split_by': config.task.get('split_by'),
      'ci': '95% normal interval over non-diverged tasks: 1.96 * std / sqrt(n)',
      'diverged': 'query loss non-finite, > divergence_threshold, or > divergence_ratio x its loss before adapting',
      'sparsity': exp.sparsity_report(state.meta_params),
      'timings': {**timings, 'eval_seconds': time.perf_counter() - t0},
      'provenance': provenance.provenance(started),
      'eval': results,
  }
  if config.gates.mask == 'meta_pruner':  # Task-conditioned masks: per-task sparsity, distances, cost.
    summary['meta_pruner'] = mask_analysis.analyse(exp, state.meta_params)
    sparsity = summary['sparsity']
    sparsity['realised_sparsity'] = summary['meta_pruner']['realised_sparsity']['mean']
    sparsity['nonzero_params'] = int(round(sparsity['total_params'] - sparsity['realised_sparsity']
                                           * sparsity['gated_weights']))
    sparsity['note'] = ('meta_pruner: realised sparsity and nonzero params are means over held-out tasks of each '
                        "task's hardened mask (see 'meta_pruner')")
    if jax.process_index() == 0:
      mask_analysis.plot(summary['meta_pruner'], os.path.join(workdir, 'task_masks.png'))
  if 'structure' in summary.get('meta_pruner', {}):  # Each task prunes its own net: mean over held-out tasks.
    summary['structure'] = summary['meta_pruner']['structure']
  elif problem.flops_fn is not None:  # Realised weight / channel sparsity and FLOPs of the pruned network.
    gate_logits = state.meta_params.get('gate_logits')
    gates = None if gate_logits is None else hard_concrete.deterministic_gates(gate_logits, exp.settings.hc)
    summary['structure'] = problem.flops_fn(state.meta_params['params'], gates)
  if timings['train_seconds'] > 0 and timings.get('timed_steps', 0) > 0:
    summary['timings']['steps_per_sec'] = timings['timed_steps'] / timings['train_seconds']
  return summary


def summarise_seeds(exp: build_lib.Experiment, state, timings: dict, workdir: str,
                    started: float | None = None) -> dict:
  """``summarise`` of each seed of a stacked state (``exp``: the one-seed experiment), combined
  (``seeds.combine``: per-seed summaries and the across-seed mean +- t-interval)."""
  seeds = seeds_lib.seed_list(exp.config)
  summaries = [summarise(seeds_lib.seed_experiment(exp, seed), step_lib.seed_state(state, i), timings, workdir,
                         started) for i, seed in enumerate(seeds)]
  summary = seeds_lib.combine(summaries, seeds)
  summary['timings'] = {**timings, 'eval_seconds': sum(s['timings']['eval_seconds'] for s in summaries)}
  if 'steps_per_sec' in summaries[0]['timings']:
    summary['timings']['steps_per_sec'] = summaries[0]['timings']['steps_per_sec']
    summary['timings']['seed_steps_per_sec'] = len(seeds) * summary['timings']['steps_per_sec']
  return summary


def run(config: ml_collections.ConfigDict, workdir: str, *, progress: Progress | None = None) -> dict:
  """Meta-trains and evaluates ``config`` in ``workdir``; returns (and writes) the summary.

  Args:
    config: the run's config (``experiments/configs``).
    workdir: the run folder (module docstring); an existing run resumes.
    progress: called as ``progress(step, record)`` at every log step (``run.log_every_steps`` and the last),
      ``record`` being the step's ``metrics.jsonl`` line as a dict (``'step'``, ``'steps_per_sec'``,
      ``'outer/query_loss'``, ``'mask/realised_sparsity'``, ...). None: the progress line is printed where absl
      logging does not show INFO (a notebook or a script; the launchers log it instead). ``quiet`` shows nothing.
  """
  started = time.time()
  exp = build_lib.build(config)
  workdir_lib.check_reachable(workdir)
  # One writer per workdir (process 0 of a multi-host run writes the files).
  with workdir_lib.lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
    return _run_locked(exp, workdir, progress, started)


def _write_model_spec(config: ml_collections.ConfigDict, workdir: str) -> None:
  """``workdir/model_spec.json``: the spec ``metaprune_jax.load_run`` predicts with (it reads no config)."""
  unavailable = None
  if seeds_lib.num_seeds(config) > 1:
    unavailable = (f'{workdir!r} holds {seeds_lib.num_seeds(config)} seeds stacked in one checkpoint '
                   '(--config.num_seeds); its summary.json has each seed\'s evaluation.')
  elif config.gates.mask == 'meta_pruner' or bool(config.inner.adapt_gates):
    unavailable = (f'{workdir!r} masks each task differently (gates.mask={config.gates.mask!r}, inner.adapt_gates='
                   f'{bool(config.inner.adapt_gates)}); adapt it with experiments.build.load(workdir).')
  spec = None if unavailable else export_spec.model_spec(config)
  if spec is not None:
    try:
      export_model.check_spec(spec)
    except ValueError as e:
      spec, unavailable = None, f'{workdir!r} has no model spec the library can run ({e}).'
  document = {'spec': spec, 'hard_concrete': build_lib.hard_concrete_constants(config)._asdict(),
              'unavailable': unavailable}
  workdir_lib.write_atomic(os.path.join(workdir, run_lib.MODEL_SPEC_FILE), json.dumps(document, indent=2))


def _run_locked(base: build_lib.Experiment, workdir: str, progress: Progress | None = None,
                started: float | None = None) -> dict:
  config = base.config
  single = seeds_lib.num_seeds(config) == 1
  exp = base if single else seeds_lib.stacked(base)  # --config.num_seeds > 1: every seed in one step.
  writes = jax.process_index() == 0  # The run's files are process 0's (orbax coordinates the checkpoints).
  if writes:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  workdir_lib.check_resume(config, workdir)  # Refuses another config before anything is written.
  resumed = _restore(exp, workdir, os.path.join(workdir, 'metrics.jsonl'))
  if writes:
    workdir_lib.write_config(config, workdir)  # Only once the config is valid and the checkpoint restored.
    _write_model_spec(config, workdir)
  state, timings = train(exp, workdir, resumed, progress=progress)
  summarise_fn = summarise if single else summarise_seeds
  summary = summarise_fn(base, state, timings, workdir, started)
  if config.gates.mask != 'none' and config.eval.dense_reference:
    dense = ml_collections.ConfigDict(config.to_dict())
    dense.gates.mask, dense.eval.dense_reference = 'none', False
    logging.info('Meta-training the dense reference with the same budget ...')
    summary['dense_reference'] = run(dense, os.path.join(workdir, 'dense_reference'), progress=progress)
  if writes:
    workdir_lib.write_atomic(os.path.join(workdir, 'summary.json'), json.dumps(summary, indent=2))
    plots.training_curves(os.path.join(workdir, 'metrics.jsonl'), os.path.join(workdir, 'training.png'),
                          title=f'{config.task.name} | mask={config.gates.mask} | seed={config.seed}')
    report.write_report(workdir, summary, config)
    events = monitor.EventWriter(os.path.join(workdir, 'tensorboard'), config.run.tensorboard)
    events.write_hparams(monitor.hparams(config), monitor.final_scores(summary), int(config.outer.num_outer_steps))
    events.close()
  logging.info('%s', report.format_summary(summary))
  return summary
