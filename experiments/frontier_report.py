"""The frontier's files: ``frontier.csv``, ``frontier.md`` and ``frontier.png`` (statistics: ``frontier_stats``).

``write_outputs`` aggregates the finished points (``frontier_stats.aggregate``)
and writes: the CSV (one line per point with its seed's task statistics, one
per method and sparsity across seeds with the pooled numbers beside), the
markdown tables (across seeds, per seed, per-point details, paired margins of
hard-concrete gates with verdicts) and the plot (across-seed 95% CIs).
"""

import csv
import math
import os

from scipy import stats as scipy_stats

from experiments import frontier_stats
from experiments.frontier_stats import METHODS
from experiments.frontier_stats import METRICS
from experiments.frontier_stats import REFERENCE
from experiments.frontier_stats import metric
from experiments.frontier_stats import shot_step_keys

_CSV_FIELDS = ('kind', 'method', 'target_sparsity', 'seed', 'realised_sparsity', 'nonzero_params',
               'total_params', 'dense_flops', 'effective_flops', 'shots', 'step', 'metric', 'mean', 'ci95',
               'ci_over', 'num_seeds', 'seed_sd', 'median', 'num_diverged', 'num_tasks', 'pooled_mean',
               'pooled_ci95', 'wall_seconds')


def write_csv(path: str, config, records: list[dict], rows: list[dict]) -> None:
  """One line per point (``kind='point'``: its seed's task statistics) and per (method, sparsity)
  (``kind='aggregate'``: across seeds, the pooled numbers beside), for every (shots, step)."""
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
    writer.writeheader()
    for kind, items in (('point', records), ('aggregate', rows)):
      for item in items:
        for shots, step in shot_step_keys(config):
          if kind == 'point':
            stats = {**frontier_stats.seed_summary(config, item, shots, step), 'ci_over': 'tasks', 'num_seeds': 1}
          else:
            pooled = item['pooled'][shots][step]
            stats = {**item['eval'][shots][step], 'pooled_mean': pooled['mean'], 'pooled_ci95': pooled['ci95']}
          writer.writerow({
              'kind': kind, 'method': item['method'], 'target_sparsity': item['target_sparsity'],
              'seed': item['seed'] if kind == 'point' else 'all',
              **{k: item[k] for k in ('realised_sparsity', 'nonzero_params', 'total_params', 'dense_flops',
                                      'effective_flops', 'wall_seconds')},
              'shots': shots.split('_')[1], 'step': step.split('_')[1], 'metric': metric(config),
              **{k: stats.get(k, '') for k in ('mean', 'ci95', 'ci_over', 'num_seeds', 'seed_sd', 'median',
                                              'num_diverged', 'num_tasks', 'pooled_mean', 'pooled_ci95')}})


def _number(config, value: float, signed: bool = False) -> str:
  """A metric value: accuracy in percent (2 decimals), a loss with 4 decimals."""
  if not math.isfinite(value):
    return '–'
  if metric(config) == 'accuracy':
    return f'{100 * value:+.2f}' if signed else f'{100 * value:.2f}%'
  return f'{value:+.4f}' if signed else f'{value:.4f}'


def _cell(config, stats: dict) -> str:
  text = f"{_number(config, stats['mean'])} ± {_number(config, stats['ci95']).rstrip('%')}"
  if stats.get('ci_over', 'seeds') != 'seeds' and 'num_seeds' in stats:
    text += ' †'
  if stats['num_diverged']:
    text += f" ({stats['num_diverged']} div.)"
  return text


def _heading(config, shots: str, step: str) -> str:
  ways = tuple(config.eval.ways)
  k_steps = step.split('_')[1]
  return (f"## {f'{int(ways[0])}-way ' if ways else ''}{shots.split('_')[1]}-shot, {k_steps} inner "
          f"step{'' if k_steps == '1' else 's'}")


def _intro(config, rows: list[dict]) -> list[str]:
  name, seeds = metric(config), sorted({s for r in rows for s in r['seeds']})
  what = (f'per-task query accuracy ({config.eval.split} split; higher is better)' if name == 'accuracy' else
          f'per-task query {"MSE" if config.task.name == "sinusoid" else "loss"} (lower is better; a task '
          f'diverged if its loss is non-finite, > {config.eval.divergence_threshold:g} or '
          f'> {config.eval.divergence_ratio:g}x its loss before adapting, and is left out of the means)')
  quantile = (f' (n = {len(seeds)}: t = {scipy_stats.t.ppf(0.975, len(seeds) - 1):.3f})' if len(seeds) > 1
              else '')
  return [
      f'# Accuracy vs sparsity: {config.task.name}', '',
      f'Held-out tasks: {config.eval.num_tasks} per seed, seeds {seeds}; metric: {what}. Budget: '
      f'{int(config.outer.num_outer_steps)} meta-steps per point for every method. Realised sparsity: fraction of '
      'zero weights in the pruned layers; FLOPs: forward pass on one example, multiply-add = 2 (dense / counting '
      'nonzero weights only).', '',
      '**Statistics.** Each seed draws its own held-out tasks (from a key of the seed) and, within a seed, every '
      "method is evaluated on the same tasks. A cell is the mean over seeds of each seed's mean over its tasks ± "
      f'the 95% t-interval over the n seeds, t(0.975, n−1)·sd/√n of the per-seed means{quantile}. † marks a '
      'single seed: its interval is over tasks (1.96·sd/√tasks) and does not cover seed-to-seed variation. '
      "Per-seed means ± task CIs are listed below each table; the pooled numbers (all seeds' tasks as one "
      'sample, which understates the seed spread) are only in frontier.csv.', '']


def _summary_tables(config, rows: list[dict], shots: str, step: str) -> list[str]:
  """Across seeds by method x sparsity, then every (method, sparsity) per seed."""
  sparsities = sorted({r['target_sparsity'] for r in rows if r['method'] != 'dense'})
  by_key = {(r['method'], r['target_sparsity']): r for r in rows}
  seeds = sorted({s for r in rows for s in r['seeds']})
  lines = [_heading(config, shots, step) + ' (mean ± 95% CI over seeds)', '',
           '| method | dense (s=0) | ' + ' | '.join(f's={s:g}' for s in sparsities) + ' |',
           '|---|---|' + '---|' * len(sparsities)]
  for m in [m for m in METHODS if any(r['method'] == m for r in rows)]:
    if m == 'dense':
      cells = [_cell(config, by_key[('dense', 0.0)]['eval'][shots][step])] + [''] * len(sparsities)
    else:
      cells = [''] + [_cell(config, by_key[(m, s)]['eval'][shots][step]) if (m, s) in by_key else '–'
                      for s in sparsities]
    lines.append(f'| {m} | ' + ' | '.join(cells) + ' |')
  lines += ['', "Per seed (mean ± 95% CI over that seed's tasks):", '',
            '| method | target | ' + ' | '.join(f'seed {s}' for s in seeds) + ' | seed sd |',
            '|---|---|' + '---|' * (len(seeds) + 1)]
  for r in rows:
    per_seed = r['per_seed'][shots][step]
    cells = [_cell(config, per_seed[s]) if s in per_seed else '–' for s in seeds]
    lines.append(f"| {r['method']} | {r['target_sparsity']:g} | " + ' | '.join(cells)
                 + f" | {_number(config, r['eval'][shots][step]['seed_sd']).rstrip('%')} |")
  return lines + ['']


def _details_table(rows: list[dict]) -> list[str]:
  lines = ['## Per method and sparsity', '',
           '| method | target | seeds | realised sparsity | nonzero params | FLOPs effective / dense | wall s / seed |',
           '|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['method']} | {r['target_sparsity']:g} | {len(r['seeds'])} | {r['realised_sparsity']:.4f} | "
                 f"{r['nonzero_params']:.0f} / {r['total_params']:.0f} | "
                 f"{r['effective_flops']:.0f} / {r['dense_flops']:.0f} | {r['wall_seconds']:.0f} |")
  return lines + ['']


def _margins_table(config, found: list[dict]) -> list[str]:
  accuracy = METRICS[metric(config)] == 'higher'
  unit = ' pp' if accuracy else ''
  lines = [f'## Margins of {REFERENCE} over each baseline (paired, over seeds)', '',
           "Within each seed both methods saw the same held-out tasks: the seed's difference is the mean per-task "
           f"lead of {REFERENCE} ({'higher' if accuracy else 'lower'} {metric(config)} is better; positive: "
           f'{REFERENCE} ahead{"; percentage points" if accuracy else ""}) over the tasks neither method diverged '
           'on ("div. a / b": the tasks each diverged on, left out of both). margin = the mean of the per-seed '
           'differences ± the 95% t-interval over seeds (†: one seed, an interval over its tasks); verdict: the '
           'method whose lead keeps the interval off zero, "neither" when it straddles zero. Means: over seeds of '
           "each seed's common-task mean.", '',
           f'| shots | steps | sparsity | baseline | seeds | {REFERENCE} | baseline | per-seed differences | '
           f"margin ± 95% CI | {'of the baseline error' if accuracy else 'relative'} | verdict |",
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for g in found:
    diffs = ', '.join(_number(config, d, signed=True) for d in g['per_seed_difference'])
    diverged = (f" (div. {g['reference_num_diverged']} / {g['baseline_num_diverged']})"
                if g['reference_num_diverged'] or g['baseline_num_diverged'] else '')
    lines.append(f"| {g['shots'].split('_')[1]} | {g['step'].split('_')[1]} | {g['sparsity']:g} | {g['baseline']} "
                 f"| {len(g['seeds'])} | {_number(config, g['reference_mean'])} "
                 f"| {_number(config, g['baseline_mean'])}{diverged} | {diffs} "
                 f"| {_number(config, g['margin'], signed=True)} ± "
                 f"{_number(config, g['margin_ci95']).rstrip('%')}{unit}{' †' if g['ci_over'] != 'seeds' else ''} "
                 f"| {100 * g['relative_margin']:+.1f}% | {g['verdict']} |")
  return lines + ['']


def format_markdown(config, rows: list[dict], failures: list[str] = ()) -> str:
  """Tables: across-seed statistics by method x sparsity and per seed; per-point details; paired margins."""
  lines = _intro(config, rows)
  for shots, step in shot_step_keys(config):
    lines += _summary_tables(config, rows, shots, step)
  lines += _details_table(rows)
  found = frontier_stats.margins(config, rows)
  if found:
    lines += _margins_table(config, found)
  if failures:
    lines += ['## Failed points', ''] + [f'- {f}' for f in failures] + ['']
  return '\n'.join(lines)


def plot_frontier(path: str, config, rows: list[dict]) -> None:
  """The metric vs sparsity (logit x axis; log y for a loss), one line per method with across-seed 95% CIs,
  dense as a horizontal band."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  keys = shot_step_keys(config)
  name = metric(config)
  scale = 100.0 if name == 'accuracy' else 1.0
  fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.2), squeeze=False)
  sparsities = sorted({r['target_sparsity'] for r in rows if r['method'] != 'dense'})
  num_seeds = sorted({len(r['seeds']) for r in rows})
  for ax, (shots, step) in zip(axes[0], keys):
    for method in METHODS:
      group = sorted((r for r in rows if r['method'] == method), key=lambda r: r['target_sparsity'])
      if not group:
        continue
      if method == 'dense':
        stats = group[0]['eval'][shots][step]
        line = ax.axhline(scale * stats['mean'], color='k', ls='--', lw=1, label='dense (s=0)')
        ax.axhspan(scale * (stats['mean'] - stats['ci95']), scale * (stats['mean'] + stats['ci95']),
                   color=line.get_color(), alpha=0.1)
        continue
      x = [min(max(r['realised_sparsity'], 1e-3), 1 - 1e-4) for r in group]  # Logit axis: 0 and 1 clipped.
      y = [scale * r['eval'][shots][step]['mean'] for r in group]
      err = [scale * r['eval'][shots][step]['ci95'] for r in group]
      ax.errorbar(x, y, yerr=err, marker='o', ms=4, capsize=3, label=method)
    ax.set_xscale('logit')
    ax.set_xticks(sparsities)
    ax.set_xticklabels([f'{s:g}' for s in sparsities])
    ax.minorticks_off()
    if name == 'loss':
      ax.set_yscale('log')
    ax.set_xlabel('realised sparsity')
    ax.set_ylabel(f'held-out {"accuracy (%)" if name == "accuracy" else "loss"}')
    ax.set_title(_heading(config, shots, step).lstrip('# '))
    ax.grid(True, which='both', alpha=0.3)
  axes[0][0].legend(fontsize=8)
  over = ('95% t-interval over ' + '/'.join(str(n) for n in num_seeds) + ' seeds' if num_seeds != [1]
          else '95% CI over one seed\'s tasks')
  fig.suptitle(f'{config.task.name}: held-out {name} vs sparsity\n(mean ± {over})', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_outputs(config, workdir: str, records: list[dict], failures: list[str] = ()) -> list[dict]:
  """Writes ``frontier.csv``, ``frontier.md`` and ``frontier.png``; returns the aggregated rows."""
  rows = frontier_stats.aggregate(config, records)
  write_csv(os.path.join(workdir, 'frontier.csv'), config, records, rows)
  with open(os.path.join(workdir, 'frontier.md'), 'w') as f:
    f.write(format_markdown(config, rows, failures))
  plot_frontier(os.path.join(workdir, 'frontier.png'), config, rows)
  return rows
