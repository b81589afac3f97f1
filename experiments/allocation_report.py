"""Per-layer allocations compared per seed: ``python -m experiments.allocation_report --workdirs=A,B``.

Reads the finished points of one or more frontier workdirs (``points/*.json``)
and labels each by its allocation: ``uniform`` / ``erk`` for
``magnitude_finetune`` (the workdir's ``pruning.prune_distribution``), the method
name with the controller's start (``pruning.rl_init``) for the controller's methods
(``rl[erk]``, ``rl_l0_fill[uniform]``), the method name otherwise (``l0``,
``erk_l0_fill``, ``hard_concrete``, ...). For every
sparsity, seed and evaluation step it writes (``--out``, markdown) each label's
mean +- 95% CI over that seed's held-out tasks (not pooled over seeds), and the
reference's (``--reference``, default ``rl[erk]``) margin over every other label on
the tasks neither diverged on: the two CIs (``separated`` when they do not
overlap) and the paired difference's CI (the same tasks, so the paired interval
is the sharper test).

The metric is the per-task query loss (lower is better; the margin is ``other -
reference``), or, where every point is a classifier's (``per_task_accuracy``, e.g.
Omniglot), the per-task query accuracy (higher is better; the margin is
``reference - other``, no task diverges): a positive margin says the reference is
better either way.
"""

import glob
import json
import os
import sys

import numpy as np
from absl import app
from absl import flags

from metaprune_jax.meta import evaluate



def load_points(workdirs: list[str]) -> list[dict]:
  """Every point record of ``workdirs``, with ``label`` set (module docstring)."""
  records = []
  for workdir in workdirs:
    with open(os.path.join(workdir, 'config.json')) as f:
      pruning = json.load(f)['pruning']
    for path in sorted(glob.glob(os.path.join(workdir, 'points', '*.json'))):
      with open(path) as f:
        record = json.load(f)
      method = record['method']
      if method == 'magnitude_finetune':
        record['label'] = pruning['prune_distribution']
      elif method.startswith('rl'):
        record['label'] = f"{method}[{pruning.get('rl_init', 'erk')}]"
      else:
        record['label'] = method
      records.append(record)
  return records


def metric_of(records: list[dict]) -> str:
  """``'accuracy'`` when every record has per-task accuracies (classification), else ``'loss'``."""
  return 'accuracy' if records and all('per_task_accuracy' in r for r in records) else 'loss'


def compare(records: list[dict], reference: str, *, divergence_threshold: float = 1e3,
            divergence_ratio: float = 10.0) -> list[dict]:
  """One row per (sparsity, seed, shots, step, label): its own summary and, beside the reference, the margin
  (positive: the reference is better; module docstring)."""
  metric = metric_of(records)
  per_task, sign = ('per_task_accuracy', -1.0) if metric == 'accuracy' else ('per_task', 1.0)
  if metric == 'accuracy':  # Accuracies in [0, 1] never diverge.
    divergence_threshold, divergence_ratio = float('inf'), float('inf')
  groups: dict[tuple, dict[str, dict]] = {}
  for r in records:
    groups.setdefault((r['target_sparsity'], r['seed']), {})[r['label']] = r
  rows = []
  for (sparsity, seed), by_label in sorted(groups.items()):
    ref = by_label.get(reference)
    for label, r in sorted(by_label.items(), key=lambda kv: (kv[0] != reference, kv[0])):
      for shots, per_step in r[per_task].items():
        before = np.asarray(per_step['step_0'])
        for step, values in per_step.items():
          if step == 'step_0' and len(per_step) > 1:  # Before adapting; a ProtoNet records step 0 only.
            continue
          values = np.asarray(values)
          row = {'sparsity': sparsity, 'seed': seed, 'shots': shots, 'step': step, 'label': label, 'metric': metric,
                 'kept_per_layer': list(r.get('kept_per_layer', {}).values()),
                 **evaluate.summarise(values, before, divergence_threshold=divergence_threshold,
                                      divergence_ratio=divergence_ratio)}
          if ref is not None and label != reference:
            ref_values = np.asarray(ref[per_task][shots][step])
            ref_before = np.asarray(ref[per_task][shots]['step_0'])
            common = evaluate.summarise_common(
                {'reference': ref_values, 'other': values}, {'reference': ref_before, 'other': before},
                divergence_threshold=divergence_threshold, divergence_ratio=divergence_ratio)
            a, b = common['reference'], common['other']
            kept = ~(evaluate.diverged(ref_values, ref_before, divergence_threshold=divergence_threshold,
                                       divergence_ratio=divergence_ratio)
                     | evaluate.diverged(values, before, divergence_threshold=divergence_threshold,
                                         divergence_ratio=divergence_ratio))
            difference = values[kept] - ref_values[kept]
            row.update({'num_common': a['num_common'], 'reference_common': (a['mean'], a['ci95']),
                        'other_common': (b['mean'], b['ci95']), 'margin': sign * (b['mean'] - a['mean']),
                        'paired_ci95': evaluate.confidence_interval_95(difference),
                        'separated': bool(a['mean'] + a['ci95'] < b['mean'] - b['ci95']
                                          or b['mean'] + b['ci95'] < a['mean'] - a['ci95'])})
          rows.append(row)
  return rows


def format_markdown(rows: list[dict], reference: str) -> str:
  metric = rows[0]['metric'] if rows else 'loss'
  margin = (f'{reference} − other' if metric == 'accuracy' else f'other − {reference}')
  lines = [f'# Allocations per seed: query {metric} (margins of {reference}: {margin} on the common tasks; '
           f'positive: {reference} better)', '',
           '| sparsity | seed | shots | step | allocation | kept per layer | mean ± 95% CI (div.) | common tasks | '
           f'{reference} / other (common) | margin ± paired CI | CIs separated |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in sorted(rows, key=lambda r: (r['sparsity'], r['shots'], r['step'], r['seed'], r['label'] != reference,
                                       r['label'])):
    margin = ['', '', '', '']
    if 'margin' in r:
      (ra, rc), (oa, oc) = r['reference_common'], r['other_common']
      margin = [str(r['num_common']), f'{ra:.3f} ± {rc:.3f} / {oa:.3f} ± {oc:.3f}',
                f"{r['margin']:+.3f} ± {r['paired_ci95']:.3f}", 'yes' if r['separated'] else 'no']
    lines.append(f"| {r['sparsity']:g} | {r['seed']} | {r['shots'].split('_')[1]} | {r['step'].split('_')[1]} | "
                 f"{r['label']} | {r['kept_per_layer']} | {r['mean']:.3f} ± {r['ci95']:.3f} ({r['num_diverged']}) | "
                 + ' | '.join(margin) + ' |')
  return '\n'.join(lines) + '\n'


def _define_flags() -> None:
  """Flags exist only when this module is the program (importing it defines none)."""
  flags.DEFINE_list('workdirs', None, 'Frontier workdirs to read (their points/*.json).', required=True)
  flags.DEFINE_string('reference', 'rl[erk]', 'The label whose margins over the others are reported.')
  flags.DEFINE_string('out', None, 'Markdown file to write (default: print only).')


def main(argv):
  del argv
  args = flags.FLAGS
  text = format_markdown(compare(load_points(args.workdirs), args.reference), args.reference)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)
  sys.stdout.write(text)


if __name__ == '__main__':
  _define_flags()
  app.run(main)
