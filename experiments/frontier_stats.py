"""The frontier's statistics: per-seed and across-seed summaries and paired margins of the reference method.

For every ``(method, sparsity)``, at every evaluated shots and inner step:

* per seed: ``evaluate.summarise`` of that seed's held-out tasks, the mean and
  its 95% CI over tasks (1.96 sd / sqrt(tasks); a loss mean leaves out the
  tasks that diverged, and counts them);
* across seeds (the headline): the mean of the per-seed means and the 95%
  t-interval over them, ``t(0.975, n-1) sd / sqrt(n)`` with ``n`` seeds. Every
  seed draws its own held-out tasks (``evaluation.held_out_tasks`` folds the
  seed into the key), so the seeds are the independent replicates; with one
  seed the interval falls back to that seed's task CI
  (``ci_over='tasks (1 seed)'``);
* pooled (secondary): all seeds' tasks as one sample, which treats tasks of
  different seeds as independent and understates the seed-to-seed spread.

``margins`` compares the reference method (hard-concrete gates) with each
baseline by paired differences: within a seed both methods are evaluated on the
same held-out tasks, so each seed gives the mean per-task difference over the
tasks neither method diverged on; the margin is the mean of those per-seed
differences with a t-interval over seeds, and the verdict names the method
whose lead keeps the interval off zero.

The metric (``config.frontier.metric``, default ``'loss'``) is the per-task
query loss (lower is better) or accuracy (classification; higher is better;
no task is left out).
"""

import math

import numpy as np

from experiments import baselines
from metaprune_jax.meta import evaluate

METHODS = ('dense', 'hard_concrete', 'meta_pruner') + tuple(baselines.BASELINES)
REFERENCE = 'hard_concrete'  # The method whose margins over the baselines are reported.
METRICS = {'loss': 'lower', 'accuracy': 'higher'}  # The reported per-task metric: which direction is better.
_PER_TASK_FIELD = {'loss': 'per_task', 'accuracy': 'per_task_accuracy'}  # Where a point record holds it.
_CLASSIFICATION_TASKS = ('omniglot', 'strokes')  # Problems with an accuracy_fn.


def metric(config) -> str:
  """``config.frontier.metric``: 'loss' (the default) or 'accuracy'."""
  return config.frontier.get('metric', 'loss') if 'frontier' in config else 'loss'


def check_metric(config) -> None:
  """Raises a ValueError naming ``--config.frontier.metric`` when it is unknown or does not fit the task."""
  name = metric(config)
  if name not in METRICS:
    raise ValueError(f'--config.frontier.metric={name!r} is unknown; valid metrics: {", ".join(METRICS)}.')
  if name == 'accuracy' and config.task.name not in _CLASSIFICATION_TASKS:
    raise ValueError(f"--config.frontier.metric='accuracy' needs a classification task "
                     f"({', '.join(_CLASSIFICATION_TASKS)}), not --task={config.task.name}; use 'loss'.")


def shot_step_keys(config) -> list[tuple[str, str]]:
  return [(f'shots_{int(s)}', f'step_{int(k)}') for s in config.eval.shots for k in config.eval.steps]


def t_interval(values) -> tuple[float, float, float]:
  """``(mean, half-width, sd)`` of the 95% Student-t interval of the mean of ``values`` ``[n]``
  (``evaluate.t_interval_95``); NaN half-width and sd for ``n < 2``."""
  values = np.asarray(values, np.float64)
  mean = float(np.mean(values)) if values.size else float('nan')
  sd = float(np.std(values, ddof=1)) if values.size >= 2 else float('nan')
  return mean, evaluate.t_interval_95(values), sd


def _values(config, record: dict, shots: str, step: str) -> tuple[np.ndarray, np.ndarray | None]:
  """``(values, before)`` ``[num_tasks]`` of ``record``'s metric at ``step``; ``before`` (step 0) for a loss."""
  name = metric(config)
  field = _PER_TASK_FIELD[name]
  if field not in record:
    raise ValueError(f"point {record.get('name')} holds no {field}: --config.frontier.metric={name!r} needs "
                     'a classification task (accuracy); use --config.frontier.metric=loss.')
  values = np.asarray(record[field][shots][step], np.float64)
  return values, (np.asarray(record['per_task'][shots]['step_0'], np.float64) if name == 'loss' else None)


def _thresholds(config) -> dict:
  if metric(config) == 'accuracy':  # Accuracy never diverges (evaluate.summarise_accuracy).
    return {'divergence_threshold': float('inf'), 'divergence_ratio': float('inf')}
  return {'divergence_threshold': float(config.eval.divergence_threshold),
          'divergence_ratio': float(config.eval.divergence_ratio)}


def seed_summary(config, record: dict, shots: str, step: str) -> dict:
  """One seed's ``evaluate.summarise`` over its tasks: ``mean``, ``ci95`` (over tasks), ``median``,
  ``num_tasks``, ``num_diverged``."""
  values, before = _values(config, record, shots, step)
  return evaluate.summarise(values, before, **_thresholds(config))


def across_seeds(per_seed: list[dict]) -> dict:
  """The headline statistic of one ``(method, sparsity)`` from its per-seed summaries (``seed_summary``).

  Returns:
    ``mean`` (of the per-seed means), ``ci95`` (95% t-interval over seeds; one
    seed: that seed's task CI), ``ci_over`` ('seeds' or 'tasks (1 seed)'),
    ``num_seeds``, ``seed_sd`` (NaN for one seed), ``num_tasks`` and
    ``num_diverged`` (summed over seeds).
  """
  mean, ci95, sd = t_interval([s['mean'] for s in per_seed])
  one = len(per_seed) == 1
  return {'mean': mean, 'ci95': per_seed[0]['ci95'] if one else ci95, 'ci_over': 'tasks (1 seed)' if one else 'seeds',
          'num_seeds': len(per_seed), 'seed_sd': sd, 'num_tasks': sum(s['num_tasks'] for s in per_seed),
          'num_diverged': sum(s['num_diverged'] for s in per_seed)}


def aggregate(config, records: list[dict]) -> list[dict]:
  """One row per (method, sparsity), methods in ``METHODS`` order.

  Each row: ``eval[shots][step]`` the across-seed statistic (``across_seeds``),
  ``per_seed[shots][step][seed]`` each seed's ``seed_summary``,
  ``pooled[shots][step]`` the secondary pooled summary, ``records`` by seed
  (for ``margins``), and the points' mean realised sparsity, parameter and FLOP
  counts and wall time.
  """
  groups: dict[tuple[str, float], list[dict]] = {}
  for r in records:
    groups.setdefault((r['method'], r['target_sparsity']), []).append(r)
  rows = []
  for (method, sparsity), group in sorted(groups.items(), key=lambda kv: (METHODS.index(kv[0][0]), kv[0][1])):
    group = sorted(group, key=lambda r: r['seed'])
    row = {'method': method, 'target_sparsity': sparsity, 'seeds': [r['seed'] for r in group],
           'records': {r['seed']: r for r in group}, 'eval': {}, 'per_seed': {}, 'pooled': {}}
    for field in ('realised_sparsity', 'nonzero_params', 'total_params', 'dense_flops', 'effective_flops',
                  'wall_seconds'):
      row[field] = float(np.mean([r[field] for r in group]))
    for shots, step in shot_step_keys(config):
      per_seed = {r['seed']: seed_summary(config, r, shots, step) for r in group}
      row['per_seed'].setdefault(shots, {})[step] = per_seed
      row['eval'].setdefault(shots, {})[step] = across_seeds(list(per_seed.values()))
      pairs = [_values(config, r, shots, step) for r in group]
      before = None if pairs[0][1] is None else np.concatenate([b for _, b in pairs])
      row['pooled'].setdefault(shots, {})[step] = evaluate.summarise(np.concatenate([v for v, _ in pairs]), before,
                                                                     **_thresholds(config))
    rows.append(row)
  return rows


def paired_seed_difference(config, reference: dict, baseline: dict, shots: str, step: str) -> dict:
  """One seed's paired comparison of two points evaluated on the same held-out tasks.

  Over the tasks neither point diverged on (a loss; every task for accuracy),
  ``difference`` is the mean per-task lead of ``reference``: baseline minus
  reference for a loss, reference minus baseline for accuracy (positive: the
  reference is better), ``task_ci95`` its 95% CI over those tasks.
  """
  ref, ref_before = _values(config, reference, shots, step)
  base, base_before = _values(config, baseline, shots, step)
  if ref.shape != base.shape:
    raise ValueError(f"{reference['name']} and {baseline['name']} were evaluated on {ref.size} and {base.size} "
                     'tasks; a paired comparison needs the same tasks (the same eval.num_tasks).')
  bad = {name: evaluate.diverged(v, b, **_thresholds(config))
         for name, v, b in (('reference', ref, ref_before), ('baseline', base, base_before))}
  common = ~(bad['reference'] | bad['baseline'])
  lead = (base - ref) if METRICS[metric(config)] == 'lower' else (ref - base)

  def mean(values):
    return float(np.mean(values[common])) if common.any() else float('nan')
  return {'difference': mean(lead), 'task_ci95': evaluate.confidence_interval_95(lead[common]),
          'reference_mean': mean(ref), 'baseline_mean': mean(base), 'num_common': int(common.sum()),
          'reference_num_diverged': int(bad['reference'].sum()), 'baseline_num_diverged': int(bad['baseline'].sum())}


def _relative(config, margin: float, baseline_mean: float) -> float:
  """``margin`` relative to the baseline's loss, or to its error rate (1 - accuracy) for accuracy."""
  scale = abs(baseline_mean) if METRICS[metric(config)] == 'lower' else 1.0 - baseline_mean
  return margin / scale if scale else float('nan')


def _verdict(margin: float, ci95: float) -> str:
  if not (math.isfinite(margin) and math.isfinite(ci95)):
    return 'n/a'
  if margin - ci95 > 0:
    return REFERENCE
  return 'baseline' if margin + ci95 < 0 else 'neither'


def margins(config, rows: list[dict]) -> list[dict]:
  """At each sparsity, ``REFERENCE`` against each baseline: paired per-seed differences, a t-interval over seeds.

  Only the seeds both methods ran are compared. ``margin`` is the mean over
  those seeds of ``paired_seed_difference`` (positive: the reference is better,
  whichever the metric's direction), ``margin_ci95`` the 95% t-interval over
  seeds (one seed: the paired task CI, ``ci_over='tasks (1 seed)'``);
  ``verdict`` is ``REFERENCE`` or 'baseline' when the interval excludes zero on
  that side, else 'neither'. ``reference_mean`` / ``baseline_mean`` are the
  means over seeds of each seed's common-task means.
  """
  by_key = {(r['method'], r['target_sparsity']): r for r in rows}
  direction = METRICS[metric(config)]
  out = []
  for shots, step in shot_step_keys(config):
    for sparsity in sorted({r['target_sparsity'] for r in rows if r['method'] == REFERENCE}):
      reference = by_key[(REFERENCE, sparsity)]['records']
      for method in METHODS:
        if method in ('dense', REFERENCE) or (method, sparsity) not in by_key:
          continue
        baseline = by_key[(method, sparsity)]['records']
        seeds = sorted(set(reference) & set(baseline))  # The same held-out tasks (they depend on the seed only).
        if not seeds:
          continue
        per_seed = [paired_seed_difference(config, reference[s], baseline[s], shots, step) for s in seeds]
        margin, ci95, sd = t_interval([p['difference'] for p in per_seed])
        one = len(seeds) == 1
        ci95 = per_seed[0]['task_ci95'] if one else ci95
        baseline_mean = float(np.mean([p['baseline_mean'] for p in per_seed]))
        out.append({'shots': shots, 'step': step, 'sparsity': sparsity, 'baseline': method, 'seeds': seeds,
                    'direction': direction, 'per_seed_difference': [p['difference'] for p in per_seed],
                    'reference_mean': float(np.mean([p['reference_mean'] for p in per_seed])),
                    'baseline_mean': baseline_mean, 'margin': margin, 'margin_ci95': ci95, 'seed_sd': sd,
                    'ci_over': 'tasks (1 seed)' if one else 'seeds',
                    'relative_margin': _relative(config, margin, baseline_mean),
                    'num_common': sum(p['num_common'] for p in per_seed),
                    'reference_num_diverged': sum(p['reference_num_diverged'] for p in per_seed),
                    'baseline_num_diverged': sum(p['baseline_num_diverged'] for p in per_seed),
                    'verdict': _verdict(margin, ci95)})
  return out
