"""Few-shot evaluation on fresh tasks: losses after k inner steps, with honest statistics.

``learner_traces`` adapts every task with a learner (vmapped, chunked to bound
memory) and records the query loss (and accuracy, for classification) before
and after each inner step. ``summarise`` turns the
per-task numbers at chosen steps into mean, 95% confidence interval, median and
the count of diverged tasks (non-finite, above ``divergence_threshold``, or more
than ``divergence_ratio`` times worse than before adaptation).
The mean and its interval are over the tasks that did not diverge; the count of
those that did is reported beside them, so a NaN is never silent.
``summarise_common`` compares models on the same tasks over one subset (the
tasks none of them diverged on), since each model's own subset differs.
``summarise_accuracy`` gives the accuracy's mean +- 95% CI (accuracy never
"diverges").
"""

import functools
import math
from collections.abc import Mapping
from collections.abc import Sequence

import jax
import numpy as np
import scipy.stats

from metaprune_jax import types
from metaprune_jax.meta.learner import Learner
from metaprune_jax.meta.settings import InnerSettings


@functools.partial(jax.jit, static_argnames=('learner', 'settings', 'gate_mode'))
def _learner_traces(meta_params, tasks: types.TaskBatch, fixed_masks, *, learner, settings, gate_mode):
  return jax.vmap(
      lambda task: learner.task_traces(meta_params, task, settings=settings, gate_mode=gate_mode,
                                       fixed_masks=fixed_masks),
      in_axes=(0,))(tasks)


def learner_traces(learner: Learner, meta_params, tasks: types.TaskBatch, *,
                   settings: InnerSettings, gate_mode: str = 'deterministic', chunk_size: int = 200,
                   fixed_masks=None) -> dict[str, np.ndarray]:
  """Query loss (and accuracy, for classification) of every task before and after each inner step.

  Args:
    learner: from ``learners.get_learner`` (bound to its gate source).
    meta_params: ``{'params', 'gate_logits', *extra}``.
    tasks: ``TaskBatch`` with a leading ``[num_tasks]`` axis.
    settings: inner-loop settings; ``num_inner_steps`` is the longest horizon.
    gate_mode: ``'deterministic'`` or ``'off'``.
    chunk_size: tasks per jitted call (bounds memory).
    fixed_masks: optional fixed mask tree.

  Returns:
    ``{'loss': [num_tasks, num_inner_steps + 1][, 'accuracy': same]}`` float64.
  """
  num_tasks = tasks.support_inputs.shape[0]
  out = []
  for start in range(0, num_tasks, chunk_size):
    chunk = jax.tree.map(lambda x, s=start: x[s:s + chunk_size], tasks)
    out.append(jax.device_get(_learner_traces(meta_params, chunk, fixed_masks, learner=learner,
                                              settings=settings, gate_mode=gate_mode)))
  return {name: np.concatenate([np.asarray(o[name], np.float64) for o in out], axis=0) for name in out[0]}


def summarise_accuracy(traces: np.ndarray, steps: Sequence[int]) -> dict[str, dict[str, float]]:
  """Mean +- 95% CI of per-task accuracies ``[num_tasks, steps + 1]`` at each inner step in ``steps``."""
  return {f'step_{k}': summarise(traces[:, k], None, divergence_threshold=float('inf')) for k in steps}


def confidence_interval_95(values: np.ndarray) -> float:
  """Half-width of the normal-approximation 95% CI of the mean: 1.96 * std / sqrt(n)."""
  n = len(values)
  if n < 2:
    return float('nan')
  return float(1.96 * np.std(values, ddof=1) / math.sqrt(n))


def t_interval_95(values) -> float:
  """Half-width of the 95% Student-t interval of the mean of ``values`` ``[n]``: ``t(0.975, n - 1) * sd / sqrt(n)``
  (``sd`` with ``ddof=1``), for a few independent replicates such as seeds; NaN for ``n < 2``."""
  values = np.asarray(values, np.float64)
  n = values.size
  if n < 2:
    return float('nan')
  return float(scipy.stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))


def diverged(values: np.ndarray, before: np.ndarray | None = None, *, divergence_threshold: float = 1e3,
             divergence_ratio: float = 10.0) -> np.ndarray:
  """Boolean ``[num_tasks]``: non-finite, above the threshold, or ``ratio`` x worse than before adapting."""
  values = np.asarray(values, np.float64)
  bad = ~np.isfinite(values) | (values > divergence_threshold)
  if before is not None:
    bad |= values > divergence_ratio * np.asarray(before, np.float64)
  return bad


def summarise(values: np.ndarray, before: np.ndarray | None = None, *, divergence_threshold: float = 1e3,
              divergence_ratio: float = 10.0) -> dict[str, float]:
  """Mean +- 95% CI and median over non-diverged tasks, plus the diverged count.

  Args:
    values: ``[num_tasks]`` per-task losses after adaptation.
    before: ``[num_tasks]`` the same tasks' losses before adaptation, or None.
    divergence_threshold: a task whose value is non-finite or above this diverged.
    divergence_ratio: a task whose loss grew to more than this multiple of its
      loss before adaptation diverged (it is on its way to overflow; at 10 steps
      such tasks were seen at 1e9 to 1e28).

  Returns:
    ``mean``/``ci95`` over kept tasks, ``median`` over all finite tasks,
    ``mean_all`` over every task (may be inf/nan), ``num_tasks``, ``num_diverged``.
  """
  values = np.asarray(values, np.float64)
  bad = diverged(values, before, divergence_threshold=divergence_threshold, divergence_ratio=divergence_ratio)
  kept = values[~bad]
  finite = values[np.isfinite(values)]
  with np.errstate(over='ignore', invalid='ignore'):
    mean_all = float(np.mean(values))
  return {
      'mean': float(np.mean(kept)) if kept.size else float('nan'),
      'ci95': confidence_interval_95(kept),
      'median': float(np.median(finite)) if finite.size else float('nan'),
      'mean_all': mean_all,
      'num_tasks': int(values.size),
      'num_diverged': int(bad.sum()),
  }


def summarise_common(values: Mapping[str, np.ndarray], before: Mapping[str, np.ndarray] | None = None, *,
                     divergence_threshold: float = 1e3, divergence_ratio: float = 10.0) -> dict[str, dict[str, float]]:
  """Mean +- 95% CI of several models on the same tasks, over the tasks that none of them diverged on.

  ``summarise`` leaves out each model's own diverged tasks, so two models'
  means cover different tasks (a model that diverges on its hardest tasks
  averages over easier ones). A comparison needs one subset: the tasks where no
  model diverged (``diverged``, the same rule as ``summarise``). Each model's own
  diverged count is kept beside it.

  Args:
    values: ``{name: [num_tasks]}`` per-task losses after adaptation; entry ``i``
      is the same task for every name.
    before: ``{name: [num_tasks]}`` the same tasks' losses before adaptation
      (names as ``values``), or None.
    divergence_threshold: as ``summarise``.
    divergence_ratio: as ``summarise``.

  Returns:
    ``{name: {'mean', 'ci95', 'num_common', 'num_tasks', 'num_diverged'}}``:
    ``mean`` and ``ci95`` over the ``num_common`` tasks no model diverged on
    (the same for every name; NaN mean when there are none), ``num_tasks`` all
    the tasks, ``num_diverged`` this model's own diverged count.

  Raises:
    ValueError: the models' task counts differ.
  """
  values = {name: np.asarray(v, np.float64) for name, v in values.items()}
  if not values:
    return {}
  sizes = {name: v.shape for name, v in values.items()}
  if len(set(sizes.values())) > 1:
    raise ValueError(f'summarise_common compares models on the same tasks, but the task counts differ: {sizes}.')
  bad = {name: diverged(v, None if before is None else before[name], divergence_threshold=divergence_threshold,
                        divergence_ratio=divergence_ratio) for name, v in values.items()}
  common = ~np.logical_or.reduce(list(bad.values()))
  out = {}
  for name, v in values.items():
    kept = v[common]
    out[name] = {'mean': float(np.mean(kept)) if kept.size else float('nan'),
                 'ci95': confidence_interval_95(kept), 'num_common': int(common.sum()),
                 'num_tasks': int(v.size), 'num_diverged': int(bad[name].sum())}
  return out


def summarise_traces(traces: np.ndarray, steps: Sequence[int], *, divergence_threshold: float = 1e3,
                     divergence_ratio: float = 10.0) -> dict[str, dict[str, float]]:
  """``summarise`` at each inner step in ``steps`` (0 = before adaptation), against step 0."""
  return {f'step_{k}': summarise(traces[:, k], traces[:, 0], divergence_threshold=divergence_threshold,
                                 divergence_ratio=divergence_ratio)
          for k in steps}
