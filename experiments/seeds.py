"""Many seeds in one process: ``--config.num_seeds=N`` meta-trains seeds ``seed, seed + 1, ..., seed + N - 1``.

The N states are stacked along a leading axis (``metaprune_jax.meta.step.stack_seeds``) and one jitted call
advances all of them (``step.over_seeds``, a ``vmap``): a small model fills the machine instead of a tenth of it.
Seed ``s`` starts from the state a one-seed run with ``--config.seed=s`` starts from, samples the same tasks
and is evaluated on the same held-out tasks, so its numbers are that run's (up to float reassociation).

The run folder holds one stacked checkpoint; ``summary.json`` has each seed's summary under ``per_seed`` and,
in ``eval``, the across-seed mean +- 95% t-interval over the per-seed means (``across_seeds``).
"""


import jax
import ml_collections
import numpy as np

from experiments import build as build_lib
from experiments import evaluation
from metaprune_jax.meta import step as step_lib
from metaprune_jax.meta.evaluate import t_interval_95

# Fields of a per-task evaluation summary (``meta.evaluate.summarise``) that are averaged over seeds.
_AVERAGED = ('mean', 'median', 'mean_all')


def num_seeds(config: ml_collections.ConfigDict) -> int:
  """``config.num_seeds`` (1 for a config saved before the field existed)."""
  return int(config.get('num_seeds', 1))


def seed_list(config: ml_collections.ConfigDict) -> list[int]:
  """The seeds a run meta-trains: ``config.seed`` and the ``num_seeds - 1`` after it."""
  return [int(config.seed) + i for i in range(num_seeds(config))]


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """``config`` as the one-seed run of ``seed`` would have it."""
  single = ml_collections.ConfigDict(config.to_dict())
  single.seed, single.num_seeds = int(seed), 1
  return single


def stacked(exp: build_lib.Experiment) -> build_lib.Experiment:
  """``exp`` meta-training ``seed_list(exp.config)`` at once: a stacked initial state, a vmapped step, and a
  sparsity report averaged over the seeds. Evaluation stays per seed (``seed_experiment``)."""
  seeds = seed_list(exp.config)
  if exp.mesh is not None:
    raise ValueError(f'--config.num_seeds={len(seeds)} runs every seed on one device; set '
                     f'--config.run.num_devices=1 (a mesh of {exp.mesh.size} devices shards one seed\'s task batch).')

  def init_state(seed=None):
    del seed  # The stacked state is keyed by each of ``seeds``.
    return step_lib.stack_seeds([exp.init_state(s) for s in seeds])

  def make_step(steps_per_call: int = 1, *, donate: bool = True, stacked_seeds: bool = True):
    if not stacked_seeds:
      raise ValueError('this experiment meta-trains stacked seeds; build one seed with seeds.seed_experiment.')
    return exp.make_step(steps_per_call, donate=donate, stacked_seeds=True)

  def sparsity_report(meta_params) -> dict:
    reports = [exp.sparsity_report(jax.tree.map(lambda x, i=i: x[i], meta_params)) for i in range(len(seeds))]
    return mean_report(reports)

  return exp._replace(init_state=init_state, make_step=make_step, sparsity_report=sparsity_report)


def seed_experiment(exp: build_lib.Experiment, seed: int) -> build_lib.Experiment:
  """``exp`` as the one-seed run of ``seed`` (its config and held-out tasks); the net and learners are shared."""
  config = seed_config(exp.config, seed)

  def evaluate(meta_params, fixed_masks=None) -> dict:
    return evaluation.evaluate(config, exp.problem, exp.eval_learner, exp.eval_settings, meta_params,
                               fixed_masks=fixed_masks)

  return exp._replace(config=config, evaluate=evaluate,
                      init_state=lambda seed=None: exp.init_state(config.seed if seed is None else seed))


def per_seed_values(value, count: int) -> np.ndarray:
  """``[count]`` values of the last step of a stacked metric (``[count]``, or ``[K, count]`` from K steps a call)."""
  return np.asarray(value, np.float64).reshape(-1, count)[-1]


def mean_report(reports: list[dict]) -> dict:
  """Sparsity reports of several seeds as one: numbers averaged (counts rounded), the seeds' values kept."""
  merged = {}
  for key, value in reports[0].items():
    values = [r[key] for r in reports]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      merged[key] = value
    else:
      mean = float(np.mean(values))
      merged[key] = int(round(mean)) if isinstance(value, int) else mean
  merged['per_seed_realised_sparsity'] = [float(r['realised_sparsity']) for r in reports]
  return merged


def across_seeds(results: list[dict]) -> dict:
  """Per-seed ``evaluate`` results (same layout) as one: each leaf summary's across-seed mean +- t-interval.

  A leaf ``{'mean', 'ci95', 'median', 'mean_all', 'num_tasks', 'num_diverged'}`` becomes ``mean`` (of the seeds'
  means), ``ci95`` (95% t-interval over the seeds' means: seeds are the independent replicates, their tasks are
  not), ``median`` / ``mean_all`` (means over seeds), ``num_tasks`` (per seed), ``num_diverged`` (summed),
  ``num_seeds`` and ``per_seed_mean``.
  """
  first = results[0]
  if isinstance(first, dict) and 'mean' in first and 'ci95' in first:
    means = [r['mean'] for r in results]
    leaf = {key: float(np.mean([r[key] for r in results])) for key in _AVERAGED if key in first}
    leaf.update(ci95=t_interval_95(means), num_tasks=int(first['num_tasks']),
                num_diverged=int(sum(r['num_diverged'] for r in results)), num_seeds=len(results),
                per_seed_mean=[float(m) for m in means])
    return leaf
  return {key: across_seeds([r[key] for r in results]) for key in first}


def combine(summaries: list[dict], seeds: list[int]) -> dict:
  """One ``summary.json`` of a stacked run from its seeds' summaries (``train.summarise`` of each)."""
  summary = dict(summaries[0])
  summary.update(
      seed=seeds[0], seeds=seeds, num_seeds=len(seeds),
      ci=(f'95% t-interval over the {len(seeds)} per-seed means (each seed: mean over its non-diverged held-out '
          'tasks; per_seed has each seed\'s own normal interval over tasks)'),
      eval=across_seeds([s['eval'] for s in summaries]),
      sparsity=mean_report([s['sparsity'] for s in summaries]),
      per_seed=[{key: s[key] for key in ('seed', 'eval', 'sparsity', 'structure', 'meta_pruner') if key in s}
                for s in summaries])
  summary.pop('structure', None)  # Each seed prunes its own net: see per_seed.
  summary.pop('meta_pruner', None)
  return summary
