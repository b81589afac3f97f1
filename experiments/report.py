"""The end-of-run report: ``workdir/report.md`` with the evaluation table and PNG plots.

``training.png`` (learning curve and sparsity, from ``plots.training_curves``) is
written by ``train.run``; this module adds ``evaluation.png`` (query metric
against inner steps, mean and 95% CI per shot count and gate mode) and the
markdown page that links both.
"""

import json
import os

import matplotlib
import numpy as np
from etils import epath

from experiments import workdir as workdir_lib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def evaluation_plot(summary: dict, out_path: str) -> None:
  """Query metric (mean +- 95% CI over non-diverged tasks) against the number of inner steps."""
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for mode, by_shots in summary['eval'].items():
    for shots, by_step in by_shots.items():
      steps = [int(k.split('_')[1]) for k in by_step]
      mean = np.array([s['mean'] for s in by_step.values()])
      ci = np.array([s['ci95'] for s in by_step.values()])
      ax.errorbar(steps, mean, yerr=ci, marker='o', capsize=3, label=f'{mode}, {shots.replace("_", " ")}')
  ax.set_xlabel('inner steps at evaluation')
  ax.set_ylabel(f"query {summary['metric']}")
  over = f"{len(summary['seeds'])} seeds' means" if 'seeds' in summary else 'tasks'
  ax.set_title(f"{summary['eval_num_tasks']} fresh tasks, 95% CI over {over}")
  ax.legend(fontsize=8)
  fig.tight_layout()
  with epath.Path(out_path).open('wb') as f:
    fig.savefig(f, format='png', dpi=110)
  plt.close(fig)


def _seeds_text(summary: dict) -> str:
  """``seed=S``, or for a stacked run (``--config.num_seeds``) its seeds and what the intervals are over."""
  if 'seeds' not in summary:
    return f"seed={summary['seed']}"
  return f"seeds={summary['seeds']} (mean +- 95% t-interval over seeds)"


def _provenance_text(record: dict) -> str:
  """One line of ``provenance.provenance``'s record (fields an older summary lacks are left out)."""
  commit = record.get('commit')
  parts = [f"commit {commit[:12] if commit else 'unknown'}" + (' (dirty tree)' if record.get('dirty') else ''),
           f"jax {record.get('jax')} / jaxlib {record.get('jaxlib')}",
           f"{record.get('backend')} x {record.get('num_devices')} ({', '.join(sorted(set(record.get('devices', []))))})"]
  if 'process_count' in record:
    parts.append(f"{record['process_count']} process(es) on {record.get('host')}")
  if 'started' in record:
    parts.append(f"started {record['started']}")
  return '; '.join(parts)


def _last_record(workdir: str) -> dict:
  path = epath.Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return {}
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  return json.loads(lines[-1]) if lines else {}


def write_report(workdir: str, summary: dict, config) -> str:
  """Writes ``report.md`` and ``evaluation.png`` in ``workdir`` (local or ``gs://``); returns the report's path."""
  evaluation_plot(summary, os.path.join(workdir, 'evaluation.png'))
  sparsity, timings, last = summary['sparsity'], summary['timings'], _last_record(workdir)
  tensorboard = '; TensorBoard: `tensorboard/`' if (epath.Path(workdir) / 'tensorboard').is_dir() else ''
  lines = [f"# Run report: {summary['task']}, mask={summary['mask']}, {_seeds_text(summary)}", '',
           f"- workdir: `{workdir_lib.absolute(workdir)}`; config: `config.json`; metrics: `metrics.jsonl`"
           + tensorboard,
           f"- meta-steps: {summary['num_outer_steps']} (resumed at step {timings.get('start_step', 0)}); "
           f"meta-batch {config.outer.meta_batch_size}; devices {config.run.num_devices}",
           f"- non-finite updates skipped: {timings.get('skipped_steps', 0)}",
           f"- compile {timings.get('compile_seconds', 0):.1f} s, train {timings.get('train_seconds', 0):.1f} s"
           + (f" ({timings['steps_per_sec']:.1f} steps/s)" if 'steps_per_sec' in timings else '')
           + f", eval {timings.get('eval_seconds', 0):.1f} s",
           f"- sparsity: realised {sparsity['realised_sparsity']:.4f}, nonzero parameters "
           f"{sparsity['nonzero_params']} / {sparsity['total_params']}"]
  if summary.get('bn_mode'):  # Nets with batch norm: how the evaluation normalised the query images.
    lines.append(f"- batch norm: {summary['bn_mode']} (config.bn_mode)")
  if summary.get('split_by'):  # A dataset split: which held-out episodes (older summaries lack the fields).
    protocol = summary.get('eval_protocol', 'mixed')
    drawn = 'all classes of an episode from one alphabet' if protocol == 'within_alphabet' else 'from the whole split'
    lines.append(f"- held-out episodes: {summary.get('eval_split')} split, disjoint by {summary['split_by']}; "
                 f"protocol {protocol} ({drawn}; config.eval.protocol)")
  if summary.get('provenance'):
    lines.append(f"- produced by: {_provenance_text(summary['provenance'])}")
  if last:
    lines.append(f"- last logged step {last['step']}: query loss {last.get('outer/query_loss', float('nan')):.4f}, "
                 f"objective {last.get('outer/objective', float('nan')):.4f}")
  lines += ['', f"## Evaluation ({summary['eval_num_tasks']} fresh tasks per shot count; {summary['ci']})", '',
            f"| model | shots | inner steps | {summary['metric']} mean | 95% CI | median | diverged |",
            '|---|---|---|---|---|---|---|']
  for mode, by_shots in summary['eval'].items():
    for shots, by_step in by_shots.items():
      for step, s in by_step.items():
        lines.append(f"| {mode} | {shots.split('_')[1]} | {step.split('_')[1]} | {s['mean']:.4f} | "
                     f"{s['ci95']:.4f} | {s['median']:.4f} | {s['num_diverged']}/{s['num_tasks']} |")
  lines += ['', '## Plots', '', '![training curves](training.png)', '', '![evaluation](evaluation.png)', '']
  path = os.path.join(workdir, 'report.md')
  epath.Path(path).write_text('\n'.join(lines))
  return path


def format_summary(summary: dict) -> str:
  """A human-readable table of the evaluation (mean +- 95% CI, median, diverged)."""
  lines = [f"task={summary['task']} {_seeds_text(summary)} eval tasks={summary['eval_num_tasks']} "
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
