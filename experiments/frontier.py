"""The accuracy-vs-sparsity frontier: ``python -m experiments.frontier --task=sinusoid``.

Runs every (method, sparsity, seed) point of the grid in the config
(``frontier_methods`` x ``frontier_sparsities`` x ``frontier_seeds``; the
``dense`` reference once per seed), each with the same meta-training budget,
and evaluates it on the held-out tasks of ``train.evaluate_model``. Outputs in
``--workdir``:

* ``points/<method>_s<sparsity>_seed<seed>.json``: one file per finished point
  (summary and per-task losses); a restart skips them, so the run is resumable.
* ``runs/<point>/``: the ``train.run`` workdirs of 'dense' and 'hard_concrete'.
* ``frontier.csv``: one row per point and one aggregated row per method/sparsity.
* ``frontier.md``: mean +- 95% CI over tasks pooled across seeds, realised
  sparsity, nonzero params, FLOPs, and the margins of 'hard_concrete' over
  every baseline.
* ``frontier.png``: held-out loss against sparsity, one line per method.

Flags: ``--task``, ``--workdir`` (default ``runs/frontier_<task>``),
``--workers=N`` (parallel processes), ``--report_only`` (write the outputs from
the points finished so far), ``--config.FIELD=VALUE``.
"""

import concurrent.futures
import csv
import hashlib
import json
import math
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

from experiments import baselines
from experiments import checkpoint
from experiments import problems
from experiments import train
from metaprune_jax import flops
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import select
from metaprune_jax.meta import evaluate
from metaprune_jax.meta import meta_pruner
from metaprune_jax.nets import masked

METHODS = ('dense', 'hard_concrete', 'meta_pruner') + tuple(baselines.BASELINES)
_TRAINED = ('dense', 'hard_concrete', 'meta_pruner')  # Methods meta-trained by ``train.run``.
REFERENCE = 'hard_concrete'  # The method whose margins over the baselines are reported.
GRID_FIELDS = ('frontier_methods', 'frontier_sparsities', 'frontier_seeds')
_PER_POINT_FIELDS = ('seed', 'target_sparsity', 'mask')


# ---------------------------------------------------------------------------
# The grid.


def validate_frontier_config(config: ml_collections.ConfigDict) -> None:
  """Checks the grid fields and every field a point uses; errors name the flag."""
  unknown = [m for m in config.frontier_methods if m not in METHODS]
  if unknown or not config.frontier_methods:
    raise ValueError(f'--config.frontier_methods={tuple(config.frontier_methods)!r} has unknown or no methods '
                     f'{unknown}; valid methods: {", ".join(METHODS)}.')
  bad = [s for s in config.frontier_sparsities if not 0.0 < float(s) < 1.0]
  if bad or not config.frontier_sparsities:
    raise ValueError(f'--config.frontier_sparsities={tuple(config.frontier_sparsities)!r} must be a non-empty '
                     'list of sparsities in (0, 1).')
  if not config.frontier_seeds or any(int(s) < 0 for s in config.frontier_seeds):
    raise ValueError(f'--config.frontier_seeds={tuple(config.frontier_seeds)!r} must be a non-empty list of '
                     'non-negative ints.')
  train.validate_config(config)
  baselines.validate_baseline_config(config)


def point_name(method: str, sparsity: float, seed: int) -> str:
  """``<method>_s<sparsity>_seed<seed>``, e.g. ``snip_s0.9_seed1`` (dense: ``dense_s0_seed0``)."""
  return f'{method}_s{float(sparsity):g}_seed{int(seed)}'


def grid(config) -> list[tuple[str, float, int]]:
  """``(method, sparsity, seed)`` points, seed-major so a partial run covers whole seeds first."""
  points = []
  for seed in config.frontier_seeds:
    if 'dense' in config.frontier_methods:
      points.append(('dense', 0.0, int(seed)))
    for sparsity in config.frontier_sparsities:
      for method in config.frontier_methods:
        if method != 'dense':
          points.append((method, float(sparsity), int(seed)))
  return points


def point_config(config, method: str, sparsity: float, seed: int) -> ml_collections.ConfigDict:
  """The config of one point: the frontier config with its seed, target and mask."""
  if method not in METHODS:
    raise ValueError(f'method {method!r} is unknown; valid methods: {", ".join(METHODS)}.')
  pc = ml_collections.ConfigDict(config.to_dict())
  pc.seed = int(seed)
  pc.target_sparsity = float(sparsity)
  pc.mask = method if method in ('hard_concrete', 'meta_pruner') else 'none'
  pc.dense_reference = False
  return pc


def fingerprint(config) -> str:
  """Hash of everything a point depends on except its own seed / target / mask and the grid."""
  fields = {k: v for k, v in config.to_dict().items() if k not in GRID_FIELDS + _PER_POINT_FIELDS}
  return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------
# One point.


def _train_run_state(pc, run_dir: str, problem):
  """Meta-trains with ``train.run`` in ``run_dir`` and restores its final state."""
  summary = train.run(pc, run_dir)
  template, _ = train.init_state(pc, problem)
  state = checkpoint.restore_latest(template, run_dir)
  if state is None or int(state.step) != int(pc.num_outer_steps):
    raise RuntimeError(f'{run_dir} holds no final checkpoint after train.run; delete it and rerun.')
  return state, summary


def _sparsity_stats(params, masks) -> dict:
  """Realised sparsity over the prunable kernels, nonzero params and FLOPs of ``params * masks``."""
  counts = flops.mlp_flops(params, masks)
  return {
      'realised_sparsity': 1.0 - counts['nonzero_kernel_weights'] / counts['kernel_weights'],
      'nonzero_params': int(select.nonzero_count(params, masks)),
      'total_params': masked.count_params(params),
      **counts,
  }


def _meta_pruner_traces(pc, meta_params, problem) -> dict:
  """Held-out query-loss traces with every task's own hardened mask (``{shots: [T, steps + 1]}``)."""
  learner, _ = train.learner_and_density(pc, problem)
  return {int(shots): evaluate.learner_traces(learner, meta_params, train.held_out_tasks(pc, problem, shots),
                                              settings=train.eval_settings(pc))['loss']
          for shots in pc.eval_shots}


def run_point(config, method: str, sparsity: float, seed: int, workdir: str) -> dict:
  """Trains and evaluates one point and writes ``points/<name>.json`` (atomically); returns the record."""
  name = point_name(method, sparsity, seed)
  pc = point_config(config, method, sparsity, seed)
  problem = problems.get_problem(pc)
  t0 = time.perf_counter()
  train_summary = None
  task_sparsity = None
  if method in _TRAINED:
    state, train_summary = _train_run_state(pc, os.path.join(workdir, 'runs', name), problem)
    meta_params = state.meta_params
    if method == 'meta_pruner':  # Every task its own hardened mask; stats of task 0's, mean sparsity of all.
      traces = _meta_pruner_traces(pc, meta_params, problem)
      tasks = train.held_out_tasks(pc, problem, int(pc.eval_shots[0]))
      features_fn = meta_pruner.task_features_fn(problem.embed_fn)
      masks = jax.tree.map(lambda m: m[0], meta_pruner.task_masks(
          meta_params, jax.tree.map(lambda x: x[:1], tasks), features_fn,
          target_sparsity=float(sparsity), hc=train.inner_settings(pc).hc))
      task_sparsity = train_summary['meta_pruner']['realised_sparsity']
    elif method == 'hard_concrete':
      masks = hard_concrete.deterministic_gates(meta_params['gate_logits'], train.inner_settings(pc).hc)
      traces = baselines.held_out_traces(pc, meta_params, problem, gate_mode='deterministic')
    else:
      masks = None
      traces = baselines.held_out_traces(pc, meta_params, problem, gate_mode='off')
  else:
    state = baselines.run_baseline(method, pc, problem)
    meta_params, masks = state.meta_params, state.masks
    traces = baselines.held_out_traces(pc, meta_params, problem, gate_mode='off', fixed_masks=masks)
  steps = [0] + [int(k) for k in pc.eval_steps]
  record = {
      'name': name, 'method': method, 'target_sparsity': float(sparsity), 'seed': int(seed),
      'fingerprint': fingerprint(config), 'num_outer_steps': int(pc.num_outer_steps),
      **_sparsity_stats(meta_params['params'], masks),
      **({} if task_sparsity is None else {'realised_sparsity': task_sparsity['mean'],
                                          'realised_sparsity_over_tasks': task_sparsity}),
      'wall_seconds': time.perf_counter() - t0,
      'eval': baselines.summarise_held_out(pc, traces),
      'per_task': {f'shots_{shots}': {f'step_{k}': [float(v) for v in t[:, k]] for k in steps}
                   for shots, t in traces.items()},
  }
  if train_summary is not None:
    record['train_run_eval'] = train_summary['eval']['dense' if method == 'dense' else 'sparse']
  points_dir = os.path.join(workdir, 'points')
  os.makedirs(points_dir, exist_ok=True)
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
  return {k: record[k] for k in ('name', 'wall_seconds', 'eval')}


# ---------------------------------------------------------------------------
# Aggregation and outputs.


def _shot_step_keys(config) -> list[tuple[str, str]]:
  return [(f'shots_{int(s)}', f'step_{int(k)}') for s in config.eval_shots for k in config.eval_steps]


def aggregate(config, records: list[dict]) -> list[dict]:
  """One row per (method, sparsity): per-task losses pooled over seeds, summarised."""
  groups: dict[tuple[str, float], list[dict]] = {}
  for r in records:
    groups.setdefault((r['method'], r['target_sparsity']), []).append(r)
  rows = []
  for (method, sparsity), group in sorted(groups.items(), key=lambda kv: (METHODS.index(kv[0][0]), kv[0][1])):
    group = sorted(group, key=lambda r: r['seed'])
    row = {'method': method, 'target_sparsity': sparsity, 'seeds': [r['seed'] for r in group], 'eval': {}}
    for field in ('realised_sparsity', 'nonzero_params', 'total_params', 'dense_flops', 'effective_flops',
                  'wall_seconds'):
      row[field] = float(np.mean([r[field] for r in group]))
    for shots, step in _shot_step_keys(config):
      values = np.concatenate([r['per_task'][shots][step] for r in group])
      before = np.concatenate([r['per_task'][shots]['step_0'] for r in group])
      stats = evaluate.summarise(values, before, divergence_threshold=float(config.divergence_threshold),
                                 divergence_ratio=float(config.divergence_ratio))
      seed_means = [r['eval'][shots][step]['mean'] for r in group]
      stats['seed_sd'] = float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else float('nan')
      row['eval'].setdefault(shots, {})[step] = stats
    rows.append(row)
  return rows


def margins(config, rows: list[dict]) -> list[dict]:
  """At each sparsity, ``REFERENCE`` against each baseline: difference of means and CI separation.

  ``margin = baseline_mean - reference_mean`` (positive: the reference is
  better); ``separated`` when the intervals do not overlap, in either direction
  (the sign of ``margin`` says which method is ahead).
  """
  by_key = {(r['method'], r['target_sparsity']): r for r in rows}
  out = []
  for shots, step in _shot_step_keys(config):
    for sparsity in sorted({r['target_sparsity'] for r in rows if r['method'] == REFERENCE}):
      ref = by_key[(REFERENCE, sparsity)]['eval'][shots][step]
      for method in METHODS:
        if method in ('dense', REFERENCE) or (method, sparsity) not in by_key:
          continue
        other = by_key[(method, sparsity)]['eval'][shots][step]
        out.append({'shots': shots, 'step': step, 'sparsity': sparsity, 'baseline': method,
                    'reference_mean': ref['mean'], 'reference_ci95': ref['ci95'],
                    'baseline_mean': other['mean'], 'baseline_ci95': other['ci95'],
                    'margin': other['mean'] - ref['mean'],
                    'relative_margin': (other['mean'] - ref['mean']) / other['mean'],
                    'separated': bool(ref['mean'] + ref['ci95'] < other['mean'] - other['ci95']
                                      or other['mean'] + other['ci95'] < ref['mean'] - ref['ci95'])})
  return out


_CSV_FIELDS = ('kind', 'method', 'target_sparsity', 'seed', 'realised_sparsity', 'nonzero_params',
               'total_params', 'dense_flops', 'effective_flops', 'shots', 'step', 'mean', 'ci95', 'median',
               'num_diverged', 'num_tasks', 'seed_sd', 'wall_seconds')


def write_csv(path: str, config, records: list[dict], rows: list[dict]) -> None:
  """One line per point and per aggregate, for every (shots, step)."""
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
    writer.writeheader()
    for kind, items in (('point', records), ('aggregate', rows)):
      for item in items:
        for shots, step in _shot_step_keys(config):
          stats = item['eval'][shots][step]
          writer.writerow({
              'kind': kind, 'method': item['method'], 'target_sparsity': item['target_sparsity'],
              'seed': item['seed'] if kind == 'point' else 'all',
              **{k: item[k] for k in ('realised_sparsity', 'nonzero_params', 'total_params', 'dense_flops',
                                      'effective_flops', 'wall_seconds')},
              'shots': shots.split('_')[1], 'step': step.split('_')[1],
              **{k: stats.get(k, '') for k in ('mean', 'ci95', 'median', 'num_diverged', 'num_tasks', 'seed_sd')}})


def _cell(stats: dict) -> str:
  text = f"{stats['mean']:.4f} ± {stats['ci95']:.4f}"
  if stats['num_diverged']:
    text += f" ({stats['num_diverged']} div.)"
  return text


def format_markdown(config, rows: list[dict], failures: list[str] = ()) -> str:
  """Tables: loss by method x sparsity; per-point details; margins of the reference."""
  sparsities = sorted({r['target_sparsity'] for r in rows if r['method'] != 'dense'})
  by_key = {(r['method'], r['target_sparsity']): r for r in rows}
  methods = [m for m in METHODS if any(r['method'] == m for r in rows)]
  seeds = sorted({s for r in rows for s in r['seeds']})
  lines = [f'# Accuracy vs sparsity: {config.task}', '',
           f'Held-out tasks: {config.eval_num_tasks} per seed, seeds {seeds}; per-task {_metric(config)} pooled '
           'over seeds; mean ± 95% CI (1.96·sd/√n over non-diverged tasks; a task diverged if its loss is '
           f'non-finite, > {config.divergence_threshold:g} or > {config.divergence_ratio:g}x its loss before '
           f'adapting). Budget: {int(config.num_outer_steps)} meta-steps per point for every method. '
           'Realised sparsity: fraction of zero kernel weights; FLOPs: forward pass on one example, '
           'multiply-add = 2 (dense / counting nonzero weights only).', '']
  for shots, step in _shot_step_keys(config):
    k_shots, k_steps = shots.split('_')[1], step.split('_')[1]
    lines += [f'## {k_shots}-shot, {k_steps} inner step{"s" if k_steps != "1" else ""}', '',
              '| method | dense (s=0) | ' + ' | '.join(f's={s:g}' for s in sparsities) + ' |',
              '|---|---|' + '---|' * len(sparsities)]
    for m in methods:
      if m == 'dense':
        cells = [_cell(by_key[('dense', 0.0)]['eval'][shots][step])] + [''] * len(sparsities)
      else:
        cells = [''] + [_cell(by_key[(m, s)]['eval'][shots][step]) if (m, s) in by_key else '–'
                        for s in sparsities]
      lines.append(f'| {m} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  lines += ['## Per method and sparsity', '',
            '| method | target | realised sparsity | nonzero params | FLOPs effective / dense | '
            + ' | '.join(f'{s.split("_")[1]}-shot {k.split("_")[1]}-step (seed sd)'
                         for s, k in _shot_step_keys(config)) + ' | wall s / seed |',
            '|---|---|---|---|---|' + '---|' * len(_shot_step_keys(config)) + '---|']
  for r in rows:
    evals = [f"{_cell(r['eval'][s][k])} ({_sd(r['eval'][s][k]['seed_sd'])})" for s, k in _shot_step_keys(config)]
    lines.append(f"| {r['method']} | {r['target_sparsity']:g} | {r['realised_sparsity']:.4f} | "
                 f"{r['nonzero_params']:.0f} / {r['total_params']:.0f} | "
                 f"{r['effective_flops']:.0f} / {r['dense_flops']:.0f} | " + ' | '.join(evals)
                 + f" | {r['wall_seconds']:.0f} |")
  lines.append('')
  found = margins(config, rows)
  if found:
    lines += [f'## Margins of {REFERENCE} over each baseline', '',
              'margin = baseline mean − hard_concrete mean (positive: hard_concrete better); '
              'separated = the two 95% CIs do not overlap.', '',
              '| shots | steps | sparsity | baseline | hard_concrete | baseline | margin | relative | separated |',
              '|---|---|---|---|---|---|---|---|---|']
    for g in found:
      lines.append(f"| {g['shots'].split('_')[1]} | {g['step'].split('_')[1]} | {g['sparsity']:g} | {g['baseline']} "
                   f"| {g['reference_mean']:.4f} ± {g['reference_ci95']:.4f} "
                   f"| {g['baseline_mean']:.4f} ± {g['baseline_ci95']:.4f} | {g['margin']:+.4f} "
                   f"| {100 * g['relative_margin']:+.1f}% | {'yes' if g['separated'] else 'no'} |")
    lines.append('')
  if failures:
    lines += ['## Failed points', ''] + [f'- {f}' for f in failures] + ['']
  return '\n'.join(lines)


def _sd(value: float) -> str:
  return '–' if not math.isfinite(value) else f'{value:.4f}'


def _metric(config) -> str:
  return 'MSE' if config.task == 'sinusoid' else 'loss'


def plot_frontier(path: str, config, rows: list[dict]) -> None:
  """Held-out loss vs sparsity (logit x axis, log y), one line per method, dense as a horizontal band."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  keys = _shot_step_keys(config)
  fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), squeeze=False)
  sparsities = sorted({r['target_sparsity'] for r in rows if r['method'] != 'dense'})
  for ax, (shots, step) in zip(axes[0], keys):
    for method in METHODS:
      group = sorted((r for r in rows if r['method'] == method), key=lambda r: r['target_sparsity'])
      if not group:
        continue
      if method == 'dense':
        stats = group[0]['eval'][shots][step]
        line = ax.axhline(stats['mean'], color='k', ls='--', lw=1, label='dense (s=0)')
        ax.axhspan(stats['mean'] - stats['ci95'], stats['mean'] + stats['ci95'], color=line.get_color(), alpha=0.1)
        continue
      x = [min(max(r['realised_sparsity'], 1e-3), 1 - 1e-4) for r in group]  # Logit axis: 0 and 1 clipped.
      y = [r['eval'][shots][step]['mean'] for r in group]
      err = [r['eval'][shots][step]['ci95'] for r in group]
      ax.errorbar(x, y, yerr=err, marker='o', ms=4, capsize=3, label=method)
    ax.set_xscale('logit')
    ax.set_xticks(sparsities)
    ax.set_xticklabels([f'{s:g}' for s in sparsities])
    ax.minorticks_off()
    ax.set_yscale('log')
    ax.set_xlabel('realised sparsity')
    ax.set_ylabel(f'held-out {_metric(config)}')
    ax.set_title(f"{shots.split('_')[1]}-shot, {step.split('_')[1]} inner step(s)")
    ax.grid(True, which='both', alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.suptitle(f'{config.task}: held-out loss vs sparsity (mean ± 95% CI, pooled over seeds)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_outputs(config, workdir: str, records: list[dict], failures: list[str] = ()) -> list[dict]:
  """Writes ``frontier.csv``, ``frontier.md`` and ``frontier.png``; returns the aggregated rows."""
  rows = aggregate(config, records)
  write_csv(os.path.join(workdir, 'frontier.csv'), config, records, rows)
  with open(os.path.join(workdir, 'frontier.md'), 'w') as f:
    f.write(format_markdown(config, rows, failures))
  plot_frontier(os.path.join(workdir, 'frontier.png'), config, rows)
  return rows


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
    first = next(iter(summary['eval'].values()))
    last_step = list(first)[-1]
    logging.info('[%d/%d] %s: %s %.4f ± %.4f (%.0f s; ETA %.0f min)', len(ran), len(todo), summary['name'],
                 last_step, first[last_step]['mean'], first[last_step]['ci95'], summary['wall_seconds'], eta / 60)
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
  rows = write_outputs(config, workdir, ordered, failures) if ordered else []
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  task = flags.FLAGS.task
  if task not in _available_tasks():
    raise app.UsageError(f'--task={task!r} has no frontier; valid tasks: {", ".join(_available_tasks())} '
                         f'(a task needs experiments/configs/frontier_<task>.py; registered tasks: '
                         f'{", ".join(sorted(problems.PROBLEMS))}).')
  config = flags.FLAGS.config
  with config.unlocked():
    config.task = task
  workdir = flags.FLAGS.workdir or os.path.join('runs', f'frontier_{task}')
  logging.info('Config:\n%s', config)
  try:
    result = run_frontier(config, workdir, workers=int(flags.FLAGS.workers), report_only=flags.FLAGS.report_only)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if result['rows']:
    with open(os.path.join(workdir, 'frontier.md')) as f:
      print(f.read())
  else:
    logging.warning('No finished points in %s yet: nothing to report.', workdir)
  if result['failures']:
    logging.error('%d point(s) failed; see frontier.md. Rerun to retry them.', len(result['failures']))
    sys.exit(1)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
