"""The accuracy-vs-sparsity frontier: ``python -m experiments.frontier --task=sinusoid`` (or ``--task=omniglot``).

Runs every (method, sparsity, seed) point of the grid in the config
(``frontier.methods`` x ``frontier.sparsities`` x ``frontier.seeds``; the
``dense`` reference once per seed), each with the same meta-training budget,
and evaluates it on the held-out tasks of ``evaluation.evaluate`` (the same
tasks for every method of a seed). Outputs in ``--workdir``:

* ``points/<method>_s<sparsity>_seed<seed>.json``: one file per finished point
  (summary, per-task losses and accuracies); a restart skips them (resumable).
* ``runs/<point>/``: the ``train.run`` workdirs of 'dense' and 'hard_concrete'.
* ``points/rl*_controller.png``: the 'rl' controller's reward curve and
  allocation (its point's ``controller`` record); every point records its
  ``kept_per_layer``.
* ``frontier.csv`` / ``.md`` / ``.png`` (``frontier_report``): per method and
  sparsity the mean ± 95% t-interval over seeds and each seed's mean ± task CI
  of ``frontier.metric`` (loss or accuracy), realised sparsity, nonzero params,
  FLOPs, and the paired margins of 'hard_concrete' over every baseline with a
  verdict (``frontier_stats``).

Flags: ``--task``, ``--workdir`` (default ``runs/frontier_<task>``),
``--workers=N`` (parallel processes), ``--report_only`` (write the outputs from
the points finished so far), ``--config.SECTION.FIELD=VALUE``.
"""

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import allocation
from experiments import baselines
from experiments import build as build_lib
from experiments import config_check
from experiments import evaluation
from experiments import frontier_report
from experiments import frontier_stats
from experiments.frontier_stats import METHODS
from experiments import problems
from experiments import train
from metaprune_jax import checkpoint
from metaprune_jax import flops
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import masking
from metaprune_jax.masks import sparsity as sparsity_lib
from metaprune_jax.meta import evaluate as evaluate_lib
from metaprune_jax.meta import meta_pruner
from metaprune_jax.pruning import criteria

_TRAINED = ('dense', 'hard_concrete', 'meta_pruner')  # Methods meta-trained by ``train.run``.
GRID_SECTION = 'frontier'  # methods, sparsities, seeds.
_PER_POINT_FIELDS = ('seed', 'sparsity.target_sparsity', 'gates.mask')  # Dotted paths set by point_config.


# ---------------------------------------------------------------------------
# The grid.


def validate_frontier_config(config: ml_collections.ConfigDict) -> None:
  """Checks the grid fields and every field a point uses; errors name the flag."""
  grid_config = config.frontier
  unknown = [m for m in grid_config.methods if m not in METHODS]
  if unknown or not grid_config.methods:
    raise ValueError(f'--config.frontier.methods={tuple(grid_config.methods)!r} has unknown or no methods '
                     f'{unknown}; valid methods: {", ".join(METHODS)}.')
  bad = [s for s in grid_config.sparsities if not 0.0 < float(s) < 1.0]
  if bad or not grid_config.sparsities:
    raise ValueError(f'--config.frontier.sparsities={tuple(grid_config.sparsities)!r} must be a non-empty '
                     'list of sparsities in (0, 1).')
  if not grid_config.seeds or any(int(s) < 0 for s in grid_config.seeds):
    raise ValueError(f'--config.frontier.seeds={tuple(grid_config.seeds)!r} must be a non-empty list of '
                     'non-negative ints.')
  frontier_stats.check_metric(config)
  build_lib.check(config)


def point_name(method: str, sparsity: float, seed: int) -> str:
  """``<method>_s<sparsity>_seed<seed>``, e.g. ``snip_s0.9_seed1`` (dense: ``dense_s0_seed0``)."""
  return f'{method}_s{float(sparsity):g}_seed{int(seed)}'


def grid(config) -> list[tuple[str, float, int]]:
  """``(method, sparsity, seed)`` points, seed-major so a partial run covers whole seeds first."""
  points = []
  for seed in config.frontier.seeds:
    if 'dense' in config.frontier.methods:
      points.append(('dense', 0.0, int(seed)))
    for sparsity in config.frontier.sparsities:
      for method in config.frontier.methods:
        if method != 'dense':
          points.append((method, float(sparsity), int(seed)))
  return points


def point_config(config, method: str, sparsity: float, seed: int) -> ml_collections.ConfigDict:
  """The config of one point: the frontier config with its seed, target and mask."""
  if method not in METHODS:
    raise ValueError(f'method {method!r} is unknown; valid methods: {", ".join(METHODS)}.')
  pc = ml_collections.ConfigDict(config.to_dict())
  pc.seed = int(seed)
  pc.sparsity.target_sparsity = float(sparsity)
  pc.gates.mask = method if method in ('hard_concrete', 'meta_pruner') else 'none'
  pc.eval.dense_reference = False
  return pc


def fingerprint(config) -> str:
  """Hash of everything a point depends on (every dotted leaf path) except its own seed / target / mask, the grid
  and the fields added since at their inert value (``config_check.inert_fields_dropped``)."""
  fields = {path: value for path, value in config_check.inert_fields_dropped(config_check.leaf_paths(config)).items()
            if path not in _PER_POINT_FIELDS and path.split('.')[0] != GRID_SECTION}
  return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------
# One point.


def _train_run_state(exp: build_lib.Experiment, run_dir: str):
  """Meta-trains with ``train.run`` in ``run_dir`` and restores its final state."""
  # Quiet: a spawned worker has no absl launcher, so train.run would print its progress lines to our stdout.
  summary = train.run(exp.config, run_dir, progress=train.quiet)
  state = checkpoint.restore_latest(exp.init_state(), run_dir)
  if state is None or int(state.step) != int(exp.config.outer.num_outer_steps):
    raise RuntimeError(f'{run_dir} holds no final checkpoint after train.run; delete it and rerun.')
  return state, summary


def _sparsity_stats(exp: build_lib.Experiment, params, masks) -> dict:
  """Realised sparsity (zero weights over the kernels outside ``gates.dense_layers``: those the gates and the
  baselines prune), nonzero params and FLOPs (``problem.flops_fn``, else ``flops.mlp_flops``) of ``params * masks``."""
  dense_layers = set(exp.config.gates.dense_layers)
  kernels, _ = jax.tree_util.tree_flatten_with_path(criteria.magnitude_scores(masking.apply_masks(params, masks)))
  pruned = [np.asarray(leaf) for path, leaf in kernels if path[0].key not in dense_layers]
  counts = (exp.problem.flops_fn or flops.mlp_flops)(params, masks)
  return {
      'realised_sparsity': 1.0 - sum(np.count_nonzero(k) for k in pruned) / sum(k.size for k in pruned),
      'nonzero_params': int(sparsity_lib.nonzero_count(params, masks)),
      'total_params': masking.count_params(params),
      **counts,
  }


def _point_masks(exp: build_lib.Experiment, meta_params, sparsity: float):
  """The mask a trained point's statistics describe: the shared gates', or held-out task 0's for the meta-pruner."""
  if exp.config.gates.mask == 'hard_concrete':
    return hard_concrete.deterministic_gates(meta_params['gate_logits'], exp.settings.hc)
  if exp.config.gates.mask == 'none':
    return None
  tasks = evaluation.held_out_tasks(exp.config, exp.problem, int(exp.config.eval.shots[0]))
  embedding = exp.config.gates.meta_pruner_embedding
  return jax.tree.map(lambda m: m[0], meta_pruner.task_masks(
      meta_params, jax.tree.map(lambda x: x[:1], tasks),
      meta_pruner.task_features_fn(exp.problem.embed_fn, embedding=embedding), target_sparsity=float(sparsity),
      hc=exp.settings.hc, expand_units=exp.problem.expand_units, embedding=embedding,
      modulation_gain=float(exp.config.gates.meta_pruner_modulation_gain)))


def run_point(config, method: str, sparsity: float, seed: int, workdir: str) -> dict:
  """Trains and evaluates one point and writes ``points/<name>.json`` (atomically); returns the record."""
  name = point_name(method, sparsity, seed)
  pc = point_config(config, method, sparsity, seed)
  t0 = time.perf_counter()
  train_summary = None
  task_sparsity = None
  searches = []  # The rl controller's result.
  if method in _TRAINED:
    exp = build_lib.build(pc)
    state, train_summary = _train_run_state(exp, os.path.join(workdir, 'runs', name))
    meta_params, masks, fixed_masks = state.meta_params, _point_masks(exp, state.meta_params, sparsity), None
    gate_mode = 'off' if method == 'dense' else 'deterministic'
    if method == 'meta_pruner':  # Every task its own hardened mask; stats of task 0's, mean sparsity of all.
      task_sparsity = train_summary['meta_pruner']['realised_sparsity']
  else:
    exp = baselines.dense_experiment(pc)
    state = baselines.run_baseline(method, exp, **({'on_search': searches.append} if method.startswith('rl')
                                                   else {}))
    meta_params, masks, fixed_masks, gate_mode = state.meta_params, state.masks, state.masks, 'off'
  traces = evaluation.held_out_trace_dicts(pc, exp.problem, exp.eval_learner, exp.eval_settings, meta_params,
                                          gate_mode=gate_mode, fixed_masks=fixed_masks)
  steps = [0] + [int(k) for k in pc.eval.steps]

  def per_task(name):
    return {f'shots_{shots}': {f'step_{k}': [float(v) for v in t[name][:, k]] for k in steps}
            for shots, t in traces.items()}
  record = {
      'name': name, 'method': method, 'target_sparsity': float(sparsity), 'seed': int(seed),
      'fingerprint': fingerprint(config), 'num_outer_steps': int(pc.outer.num_outer_steps),
      **_sparsity_stats(exp, meta_params['params'], masks),
      'kept_per_layer': allocation.kept_per_layer(meta_params['params'], masks),
      **({} if task_sparsity is None else {'realised_sparsity': task_sparsity['mean'],
                                          'realised_sparsity_over_tasks': task_sparsity}),
      'wall_seconds': time.perf_counter() - t0,
      'eval': evaluation.summarise_held_out(pc, {shots: t['loss'] for shots, t in traces.items()}),
      'per_task': per_task('loss'),
  }
  if exp.problem.accuracy_fn is not None:  # Classification: the per-task query accuracy too.
    eval_steps = [int(k) for k in pc.eval.steps]
    record['eval_accuracy'] = {f'shots_{shots}': evaluate_lib.summarise_accuracy(t['accuracy'], eval_steps)
                               for shots, t in traces.items()}
    record['per_task_accuracy'] = per_task('accuracy')
  if train_summary is not None:
    record['train_run_eval'] = train_summary['eval']['dense' if method == 'dense' else 'sparse']
  points_dir = os.path.join(workdir, 'points')
  os.makedirs(points_dir, exist_ok=True)
  if searches:
    record['controller'] = allocation.summary(pc, searches[0], meta_params['params'])
    allocation.plot_search(os.path.join(points_dir, f'{name}_controller.png'), record['controller'])
  path = os.path.join(points_dir, f'{name}.json')
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f)
  os.replace(path + '.tmp', path)
  return record


def load_point(config, workdir: str, method: str, sparsity: float, seed: int) -> dict | None:
  """The finished point's record, or None; a point written under another config is an error."""
  path = os.path.join(workdir, 'points', f'{point_name(method, sparsity, seed)}.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  if record.get('fingerprint') != fingerprint(config):
    raise ValueError(f'{path} was written with a different config (fingerprint {record.get("fingerprint")} vs '
                     f'{fingerprint(config)}). Use a fresh --workdir, or delete {os.path.dirname(path)} to rerun.')
  return record


def _point_worker(config_dict: dict, method: str, sparsity: float, seed: int, workdir: str) -> dict:
  """Entry point of a worker process: returns a small summary (the record is on disk)."""
  record = run_point(ml_collections.ConfigDict(config_dict), method, sparsity, seed, workdir)
  return {k: record[k] for k in ('name', 'wall_seconds', 'eval', 'eval_accuracy') if k in record}


# ---------------------------------------------------------------------------
# The driver.


def run_frontier(config: ml_collections.ConfigDict, workdir: str, *, workers: int = 1,
                 report_only: bool = False) -> dict:
  """Runs every missing point (in ``workers`` processes), then writes the outputs.

  With ``report_only`` nothing runs: the outputs are written from the points
  finished so far (e.g. while another process is still running the grid).

  Returns:
    ``{'records': [...], 'rows': [...], 'failures': [...], 'ran': [names], 'skipped': [names]}``.
  """
  validate_frontier_config(config)
  if int(workers) < 1:
    raise ValueError(f'--workers={workers} must be >= 1.')
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  points = grid(config)
  records, todo, skipped = {}, [], []
  for point in points:
    record = load_point(config, workdir, *point)
    if record is None:
      todo.append(point)
    else:
      records[point] = record
      skipped.append(record['name'])
  logging.info('Frontier: %d points, %d finished, %d to run with %d worker(s).', len(points), len(skipped),
               0 if report_only else len(todo), workers)
  if report_only:
    todo = []
  failures, ran = [], []
  t0 = time.perf_counter()

  def done(point, summary):
    ran.append(summary['name'])
    elapsed = time.perf_counter() - t0
    eta = elapsed / len(ran) * (len(todo) - len(ran))
    metric = frontier_stats.metric(config)
    first = next(iter(summary['eval_accuracy' if metric == 'accuracy' else 'eval'].values()))
    last_step = list(first)[-1]
    logging.info('[%d/%d] %s: %s %s %.4f ± %.4f (%.0f s; ETA %.0f min)', len(ran), len(todo), summary['name'],
                 last_step, metric, first[last_step]['mean'], first[last_step]['ci95'], summary['wall_seconds'],
                 eta / 60)
    records[point] = load_point(config, workdir, *point)

  def failed(point, error):
    name = point_name(*point)
    failures.append(f'{name}: {type(error).__name__}: {error}')
    logging.error('Point %s failed: %s', name, error)

  if workers == 1:
    for point in todo:
      try:
        record = run_point(config, *point, workdir)
        done(point, record)
      except (FloatingPointError, ValueError, RuntimeError) as e:
        failed(point, e)
  else:
    context = multiprocessing.get_context('spawn')  # JAX is not fork-safe.
    with concurrent.futures.ProcessPoolExecutor(max_workers=int(workers), mp_context=context) as pool:
      futures = {pool.submit(_point_worker, config.to_dict(), *point, workdir): point for point in todo}
      for future in concurrent.futures.as_completed(futures):
        point = futures[future]
        try:
          done(point, future.result())
        except Exception as e:  # pylint: disable=broad-except  # A worker's error is reported, not fatal.
          failed(point, e)
  ordered = [records[p] for p in points if p in records]
  rows = frontier_report.write_outputs(config, workdir, ordered, failures) if ordered else []
  return {'records': ordered, 'rows': rows, 'failures': failures, 'ran': ran, 'skipped': skipped}


# ---------------------------------------------------------------------------
# Launcher.

_CONFIG_DIR = os.path.join(os.path.dirname(__file__), 'configs')


def _frontier_config_path(task: str) -> str:
  return os.path.join(_CONFIG_DIR, f'frontier_{task}.py')


def _available_tasks() -> list[str]:
  return sorted(t for t in problems.PROBLEMS if os.path.exists(_frontier_config_path(t)))


def _define_flags() -> None:
  """Flags exist only when this module is the program (importing it defines none)."""
  task = problems.task_from_argv(sys.argv)
  flags.DEFINE_string('task', 'sinusoid', f'Task family; one with a configs/frontier_<task>.py: {_available_tasks()}.')
  flags.DEFINE_string('workdir', None, 'Output folder (default: runs/frontier_<task>). Reruns skip finished points.')
  flags.DEFINE_integer('workers', 1, 'Points run in parallel processes (at most the number of cores).')
  flags.DEFINE_bool('report_only', False, 'Write frontier.csv/md/png from the finished points; run nothing.')
  config_flags.DEFINE_config_file(
      'config', _frontier_config_path(task) if task in _available_tasks() else None,
      'Frontier config; defaults to experiments/configs/frontier_<task>.py.', lock_config=True)


def _exit_with_error(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _precheck(argv: list[str]) -> None:
  """``--task``, ``--config`` and every ``--config.*`` override, before absl parses them (one line, no traceback)."""
  task = problems.task_from_argv(argv, default=None)
  if task is not None and task not in _available_tasks():
    _exit_with_error(f'--task={task!r} has no frontier; valid tasks: {", ".join(_available_tasks())} '
                     f'(a task needs experiments/configs/frontier_<task>.py; registered tasks: '
                     f'{", ".join(sorted(problems.PROBLEMS))}).')
  try:
    config_check.precheck_argv(argv, _available_tasks(), _frontier_config_path)
  except config_check.ConfigError as e:
    _exit_with_error(str(e))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = flags.FLAGS.config
  task = config.task.name  # _precheck: the same as --task where both are given.
  workdir = flags.FLAGS.workdir or os.path.join('runs', f'frontier_{task}')
  logging.info('Config:\n%s', config)
  try:
    result = run_frontier(config, workdir, workers=int(flags.FLAGS.workers), report_only=flags.FLAGS.report_only)
  except ValueError as e:
    _exit_with_error(str(e))
  if result['rows']:
    with open(os.path.join(workdir, 'frontier.md')) as f:
      print(f.read())
  else:
    logging.warning('No finished points in %s yet: nothing to report.', workdir)
  if result['failures']:
    logging.error('%d point(s) failed; see frontier.md. Rerun to retry them.', len(result['failures']))
    sys.exit(1)


if __name__ == '__main__':
  _precheck(sys.argv)
  _define_flags()
  app.run(main)
