r"""Does distilling a dense teacher help a sparse student? Paired per-task comparison, per seed.

For each seed: a dense teacher run (``gates.mask='none'``), then at each
sparsity two students with the same recipe, seed and held-out tasks: without
distillation and with ``--weight`` (``config.distill``). The students' per-task
post-adaptation losses (and accuracies for classification) on the held-out
tasks are compared pairwise (same tasks): the mean difference
``distilled - plain`` and its 95% CI, per seed (not pooled across seeds).
Runs already finished in ``--workdir`` are reused (rerunning resumes).

Run::

  python -m benchmarks.distillation --task=sinusoid --config=experiments/configs/frontier_sinusoid.py \
      --workdir=runs/distill_sinusoid --sparsities=0.9,0.95 --seeds=0,1,2 --weight=0.5
"""

import json
import os

import numpy as np
from absl import app
from absl import flags

from experiments import build
from experiments import config_check
from experiments import evaluation
from experiments import train
from metaprune_jax.meta import evaluate as evaluate_lib


def _config(path: str, task: str, seed: int, overrides: dict):
  config = config_check.load_config_file(path)
  assert config.task.name == task, f'{path} is a {config.task.name} config, not {task}'
  config.seed = seed
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split('.')
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


def _train(config, workdir: str) -> None:
  if not os.path.isfile(os.path.join(workdir, 'summary.json')):
    train.run(config, workdir)


def per_task(workdir: str) -> dict[int, dict[str, np.ndarray]]:
  """``{shots: {'loss'[, 'accuracy']: [tasks, steps + 1]}}`` of the sparse model on the held-out tasks."""
  exp, state = build.load(workdir)
  return evaluation.held_out_trace_dicts(exp.config, exp.problem, exp.eval_learner, exp.eval_settings,
                                         state.meta_params, gate_mode='deterministic')


def paired(plain: np.ndarray, distilled: np.ndarray) -> dict:
  """Means +- 95% CIs of two per-task arrays over the same tasks and of their difference."""
  diff = distilled - plain
  summary = lambda v: {'mean': float(np.mean(v)), 'ci95': evaluate_lib.confidence_interval_95(v)}  # noqa: E731
  return {'plain': summary(plain), 'distilled': summary(distilled), 'difference': summary(diff),
          'separated': bool(abs(np.mean(diff)) > evaluate_lib.confidence_interval_95(diff))}


def run(*, task: str, config_path: str, workdir: str, sparsities, seeds, weight: float, steps=None,
        overrides: dict | None = None) -> dict:
  """Teacher and students per seed (``overrides``: dotted config fields set on every run), compared per task."""
  common = {**(overrides or {}), **({'outer.num_outer_steps': steps} if steps else {})}
  results = {'task': task, 'config': config_path, 'weight': weight, 'seeds': list(seeds), 'comparisons': []}
  for seed in seeds:
    teacher = os.path.join(workdir, f'seed{seed}', 'teacher')
    _train(_config(config_path, task, seed, {**common, 'gates.mask': 'none'}), teacher)
    for sparsity in sparsities:
      runs = {}
      for name, distill in (('plain', {}), ('distilled', {'distill.weight': weight, 'distill.teacher': teacher})):
        runs[name] = os.path.join(workdir, f'seed{seed}', f'{name}_{sparsity}')
        student = {**common, 'gates.mask': 'hard_concrete', 'sparsity.target_sparsity': sparsity, **distill}
        _train(_config(config_path, task, seed, student), runs[name])
      plain, distilled = per_task(runs['plain']), per_task(runs['distilled'])
      config = build.load(runs['plain'])[0].config
      for shots in plain:
        for metric, name in (('loss', 'query loss'), ('accuracy', 'query accuracy')):
          if metric not in plain[shots]:
            continue
          for step in config.eval.steps:
            results['comparisons'].append({
                'seed': seed, 'sparsity': sparsity, 'shots': shots, 'inner_step': int(step),
                'num_tasks': int(plain[shots][metric].shape[0]), 'metric': name,
                **paired(plain[shots][metric][:, int(step)], distilled[shots][metric][:, int(step)])})
  return results


def define_flags() -> None:
  """The script's flags (defined only when run as a script, so tests can import this module)."""
  flags.DEFINE_string('task', 'sinusoid', 'Task name (must match the config).')
  flags.DEFINE_string('config', 'experiments/configs/frontier_sinusoid.py', 'Recipe config file.')
  flags.DEFINE_string('workdir', 'runs/distill_sinusoid', 'Folder of the runs.')
  flags.DEFINE_list('sparsities', ['0.9', '0.95'], 'Target sparsities.')
  flags.DEFINE_list('seeds', ['0'], 'Seeds.')
  flags.DEFINE_float('weight', 0.5, "The teacher's weight (config.distill.weight).")
  flags.DEFINE_integer('steps', 0, 'Meta-steps per run (0: the config).')


def main(argv):
  del argv
  values = flags.FLAGS
  results = run(task=values.task, config_path=values.config, workdir=values.workdir,
                sparsities=[float(s) for s in values.sparsities], seeds=[int(s) for s in values.seeds],
                weight=values.weight, steps=values.steps or None)
  os.makedirs(values.workdir, exist_ok=True)
  with open(os.path.join(values.workdir, 'distillation.json'), 'w') as f:
    json.dump(results, f, indent=1)
  print(json.dumps(results, indent=1))


if __name__ == '__main__':
  define_flags()
  app.run(main)
