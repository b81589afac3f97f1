"""The frontier's outputs: per-method rows pooled over seeds, margins, ``frontier.csv`` / ``.md`` / ``.png``.

``aggregate`` pools the per-task losses of every (method, sparsity) over its
seeds (each method's mean over its own non-diverged tasks); ``margins`` gives
the reference method's (hard-concrete gates) margin over each baseline, both
means over the tasks neither diverged on; ``write_outputs`` writes the three
files.
"""

import csv
import math
import os

import numpy as np

from experiments import baselines
from metaprune_jax.meta import evaluate

METHODS = ('dense', 'hard_concrete', 'meta_pruner') + tuple(baselines.BASELINES)
REFERENCE = 'hard_concrete'  # The method whose margins over the baselines are reported.


def _shot_step_keys(config) -> list[tuple[str, str]]:
  return [(f'shots_{int(s)}', f'step_{int(k)}') for s in config.eval.shots for k in config.eval.steps]


def aggregate(config, records: list[dict]) -> list[dict]:
  """One row per (method, sparsity): per-task losses pooled over seeds, summarised.

  Each row's ``eval`` is ``evaluate.summarise`` of its own tasks (mean over the
  tasks it did not diverge on); ``per_task_by_seed`` keeps every seed's
  per-task losses for ``margins``.
  """
  groups: dict[tuple[str, float], list[dict]] = {}
  for r in records:
    groups.setdefault((r['method'], r['target_sparsity']), []).append(r)
  rows = []
  for (method, sparsity), group in sorted(groups.items(), key=lambda kv: (METHODS.index(kv[0][0]), kv[0][1])):
    group = sorted(group, key=lambda r: r['seed'])
    row = {'method': method, 'target_sparsity': sparsity, 'seeds': [r['seed'] for r in group], 'eval': {},
           'per_task_by_seed': {r['seed']: r['per_task'] for r in group}}
    for field in ('realised_sparsity', 'nonzero_params', 'total_params', 'dense_flops', 'effective_flops',
                  'wall_seconds'):
      row[field] = float(np.mean([r[field] for r in group]))
    for shots, step in _shot_step_keys(config):
      values = np.concatenate([r['per_task'][shots][step] for r in group])
      before = np.concatenate([r['per_task'][shots]['step_0'] for r in group])
      stats = evaluate.summarise(values, before, divergence_threshold=float(config.eval.divergence_threshold),
                                 divergence_ratio=float(config.eval.divergence_ratio))
      seed_means = [r['eval'][shots][step]['mean'] for r in group]
      stats['seed_sd'] = float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else float('nan')
      row['eval'].setdefault(shots, {})[step] = stats
    rows.append(row)
  return rows


def _pooled(per_task_by_seed: dict, seeds: list[int], shots: str, step: str) -> np.ndarray:
  """``[len(seeds) * num_tasks]``: the per-task losses at ``step`` of ``seeds``, in that order."""
  return np.concatenate([per_task_by_seed[seed][shots][step] for seed in seeds])


def margins(config, rows: list[dict]) -> list[dict]:
  """At each sparsity, ``REFERENCE`` against each baseline: difference of means and CI separation.

  Both means (and CIs) are over the same tasks: those of the seeds both methods
  ran, minus every task where either diverged (``evaluate.summarise_common``),
  so a method is not credited for dropping the tasks it diverged on. Each
  method's own diverged count is reported beside (``reference_num_diverged``,
  ``baseline_num_diverged``, over those seeds), with ``num_common`` the tasks
  compared. ``margin = baseline_mean - reference_mean`` (positive: the
  reference is better); ``separated`` when the intervals do not overlap, in
  either direction (the sign of ``margin`` says which method is ahead).
  """
  by_key = {(r['method'], r['target_sparsity']): r for r in rows}
  out = []
  for shots, step in _shot_step_keys(config):
    for sparsity in sorted({r['target_sparsity'] for r in rows if r['method'] == REFERENCE}):
      reference = by_key[(REFERENCE, sparsity)]['per_task_by_seed']
      for method in METHODS:
        if method in ('dense', REFERENCE) or (method, sparsity) not in by_key:
          continue
        baseline = by_key[(method, sparsity)]['per_task_by_seed']
        seeds = sorted(set(reference) & set(baseline))  # The same held-out tasks (they depend on the seed only).
        if not seeds:
          continue
        stats = evaluate.summarise_common(
            {'reference': _pooled(reference, seeds, shots, step), 'baseline': _pooled(baseline, seeds, shots, step)},
            {'reference': _pooled(reference, seeds, shots, 'step_0'),
             'baseline': _pooled(baseline, seeds, shots, 'step_0')},
            divergence_threshold=float(config.eval.divergence_threshold),
            divergence_ratio=float(config.eval.divergence_ratio))
        ref, other = stats['reference'], stats['baseline']
        out.append({'shots': shots, 'step': step, 'sparsity': sparsity, 'baseline': method,
                    'reference_mean': ref['mean'], 'reference_ci95': ref['ci95'],
                    'baseline_mean': other['mean'], 'baseline_ci95': other['ci95'],
                    'num_common': ref['num_common'], 'reference_num_diverged': ref['num_diverged'],
                    'baseline_num_diverged': other['num_diverged'],
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
  lines = [f'# Accuracy vs sparsity: {config.task.name}', '',
           f'Held-out tasks: {config.eval.num_tasks} per seed, seeds {seeds}; per-task {_metric(config)} pooled '
           'over seeds; mean ± 95% CI (1.96·sd/√n over non-diverged tasks; a task diverged if its loss is '
           f'non-finite, > {config.eval.divergence_threshold:g} or > {config.eval.divergence_ratio:g}x its loss '
           f'before adapting). Budget: {int(config.outer.num_outer_steps)} meta-steps per point for every method. '
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
              'margin = baseline mean − hard_concrete mean (positive: hard_concrete better); both means over the '
              'same tasks, those neither method diverged on (common tasks; each method\'s own diverged count in '
              'brackets); separated = the two 95% CIs do not overlap.', '',
              ('| shots | steps | sparsity | baseline | common tasks | hard_concrete | baseline | margin | relative '
               '| separated |'),
              '|---|---|---|---|---|---|---|---|---|---|']
    for g in found:
      lines.append(f"| {g['shots'].split('_')[1]} | {g['step'].split('_')[1]} | {g['sparsity']:g} | {g['baseline']} "
                   f"| {g['num_common']} "
                   f"| {g['reference_mean']:.4f} ± {g['reference_ci95']:.4f} ({g['reference_num_diverged']} div.) "
                   f"| {g['baseline_mean']:.4f} ± {g['baseline_ci95']:.4f} ({g['baseline_num_diverged']} div.) "
                   f"| {g['margin']:+.4f} | {100 * g['relative_margin']:+.1f}% | {'yes' if g['separated'] else 'no'} |")
    lines.append('')
  if failures:
    lines += ['## Failed points', ''] + [f'- {f}' for f in failures] + ['']
  return '\n'.join(lines)


def _sd(value: float) -> str:
  return '–' if not math.isfinite(value) else f'{value:.4f}'


def _metric(config) -> str:
  return 'MSE' if config.task.name == 'sinusoid' else 'loss'


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
  fig.suptitle(f'{config.task.name}: held-out loss vs sparsity (mean ± 95% CI, pooled over seeds)')
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
