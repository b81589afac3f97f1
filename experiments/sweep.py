"""Hyperparameter sweeps: ``python -m experiments.sweep --task=sinusoid --sweep=SPEC --workdir=DIR [--parallel=N]``.

``--backend=local`` (the default) runs the runs as local processes, ``--parallel``
at a time; ``--backend=ray`` runs each as a Ray Tune trial on a Ray cluster
(``experiments/sweep_ray.py``: resources per trial, retries, ASHA early stopping);
``--dry_run`` prints one shell command per run still to do and runs nothing (for
job arrays: SLURM, Kubernetes).

``SPEC`` is a Python file with ``get_sweep() -> dict`` or a YAML file holding
the same dict (PyYAML is installed with orbax-checkpoint)::

    {'method': 'grid',                  # or 'random'
     # Dotted config paths (as in --config.SECTION.FIELD=VALUE).
     'parameters': {'sparsity.target_sparsity': [0.5, 0.9],      # grid / random: a list of values
                    'outer.outer_lr': {'log_uniform': [1e-4, 1e-2]}},  # random only: uniform / log_uniform
     'seeds': [0, 1],
     'num_samples': 8,                  # random only: parameter draws (each run with every seed)
     'random_seed': 0,                  # random only: the draws are reproducible
     'config': 'experiments/configs/smoke.py',  # optional; default experiments/configs/<task>.py
     'fixed': {'outer.num_outer_steps': 1000},  # optional; overrides shared by every run
     'metric': 'eval.sparse.shots_5.step_1.mean'}  # dotted path into summary.json

Every field is checked against the config file before anything runs (an unknown one
names the closest valid path). Every run is ``experiments.maml_prune`` in its own process and its own workdir
``DIR/runs/<name>`` (so a run killed mid-way resumes from its checkpoint), up to
``--parallel`` at a time. A run whose ``summary.json`` is readable is complete and
is skipped when the sweep is restarted (a missing or truncated one is rerun: a run
stopped by an error writes none); so is a run that ASHA stopped early (its
``early_stopped.json``; delete that file to finish the run on the next start).
Stopping the sweep (SIGTERM, Ctrl-C) ends its
running runs; each resumes from its checkpoint on the next start. At the end the summaries are gathered
into ``DIR/results.csv``, ``DIR/results.md`` (per run, and mean +- 95% CI over
seeds; ``status`` is ``done``, ``early_stopped`` or ``missing``) and ``DIR/sweep.png``
(the metric against the first swept field), the same files for both backends.
"""

import csv
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import matplotlib
import numpy as np
from absl import app
from absl import flags
from absl import logging

from experiments import config_check

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ('grid', 'random')
DISTRIBUTIONS = ('uniform', 'log_uniform')
DEFAULT_METRIC = 'eval.sparse.shots_5.step_1.mean'

FLAGS = flags.FLAGS
RAY_FLAGS = ('address', 'trial_cpus', 'trial_gpus', 'trial_tpus', 'max_failures', 'scheduler', 'scheduler_metric',
             'scheduler_mode', 'asha_grace_steps', 'asha_reduction_factor')
EARLY_STOPPED = 'early_stopped.json'


def define_flags() -> None:
  """The launcher's flags: defined only when this module runs as ``__main__`` (experiments.sweep_ray imports
  it, and a second definition would clash)."""
  flags.DEFINE_string('task', 'sinusoid', 'Task family (as for experiments.maml_prune).')
  flags.DEFINE_string('sweep', None, 'Sweep spec: a .py file with get_sweep() or a .yaml file.', required=True)
  flags.DEFINE_string('workdir', None, 'Sweep folder; runs go to WORKDIR/runs/<name>. Rerun to continue.',
                      required=True)
  flags.DEFINE_enum('backend', 'local', ['local', 'ray'], 'Where runs execute: local processes (--parallel at a time) '
                    'or Ray Tune trials on a Ray cluster (the flags below).')
  flags.DEFINE_bool('dry_run', False, 'Print one shell command per run still to do and run nothing (for job arrays).')
  flags.DEFINE_integer('parallel', 1, 'Runs at a time (separate processes); --backend=local.')
  # --backend=ray only (experiments/sweep_ray.py):
  flags.DEFINE_string('address', '', 'Ray cluster to join: host:port, or auto (the running one); empty starts a local '
                      'Ray instance for the sweep.')
  flags.DEFINE_float('trial_cpus', 1.0, 'CPUs each trial reserves.')
  flags.DEFINE_float('trial_gpus', 0.0, 'GPUs each trial reserves (Ray sets CUDA_VISIBLE_DEVICES for its run).')
  flags.DEFINE_float('trial_tpus', 0.0, "TPU chips each trial reserves (Ray's 'TPU' resource).")
  flags.DEFINE_integer('max_failures', 2, 'Retries of a failed trial (its run resumes from its checkpoint).')
  flags.DEFINE_enum('scheduler', 'none', ['none', 'asha'], 'Trial scheduler: none runs every trial to the end; asha '
                    'stops trials early on --scheduler_metric.')
  flags.DEFINE_string('scheduler_metric', '', 'A metrics.jsonl field ASHA compares (e.g. outer/query_loss).')
  flags.DEFINE_enum('scheduler_mode', 'min', ['min', 'max'], 'Whether a lower or higher --scheduler_metric is better.')
  flags.DEFINE_integer('asha_grace_steps', 0, 'Outer steps before ASHA may stop a trial; 0: a tenth of the steps.')
  flags.DEFINE_float('asha_reduction_factor', 4.0, 'ASHA keeps 1 / this of the trials at each rung.')


def load_spec(path: str) -> dict:
  """The sweep dict from a ``.py`` (``get_sweep()``) or ``.yaml`` / ``.yml`` file, checked."""
  if not os.path.exists(path):
    raise ValueError(f'--sweep={path} does not exist.')
  if path.endswith(('.yaml', '.yml')):
    import yaml  # pylint: disable=g-import-not-at-top
    with open(path) as f:
      spec = yaml.safe_load(f)
  elif path.endswith('.py'):
    module_spec = importlib.util.spec_from_file_location('sweep_spec', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, 'get_sweep'):
      raise ValueError(f'--sweep={path} defines no get_sweep() returning the sweep dict.')
    spec = module.get_sweep()
  else:
    raise ValueError(f'--sweep={path} is invalid: use a .py file with get_sweep() or a .yaml file.')
  validate_spec(spec, path)
  return spec


def validate_spec(spec: dict, path: str = 'SPEC') -> None:
  def fail(rule):
    raise ValueError(f'--sweep={path} is invalid: {rule}.')
  known = {'method', 'parameters', 'seeds', 'num_samples', 'random_seed', 'config', 'fixed', 'metric'}
  if not isinstance(spec, dict) or set(spec) - known:
    fail(f'expected a dict with keys from {sorted(known)}, got {sorted(spec) if isinstance(spec, dict) else spec}')
  if spec.get('method', 'grid') not in METHODS:
    fail(f"method={spec.get('method')!r}; use one of {METHODS}")
  seeds = spec.get('seeds', [0])
  if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
    fail(f'seeds={seeds!r} must be a non-empty list of integers >= 0')
  for field, values in spec.get('parameters', {}).items():
    if isinstance(values, dict):
      if spec.get('method', 'grid') != 'random' or len(values) != 1 or next(iter(values)) not in DISTRIBUTIONS:
        fail(f'parameters.{field}={values!r}: distributions ({DISTRIBUTIONS}: [low, high]) need method random')
    elif not isinstance(values, (list, tuple)) or not values:
      fail(f'parameters.{field}={values!r} must be a non-empty list of values')
  if spec.get('method') == 'random' and int(spec.get('num_samples', 0)) <= 0:
    fail('method random needs num_samples > 0')


def _draw(values, rng: np.random.RandomState):
  if isinstance(values, dict):
    (kind, (low, high)), = values.items()
    if kind == 'log_uniform':
      return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return float(rng.uniform(low, high))
  return values[rng.randint(len(values))]


def expand(spec: dict) -> list[dict]:
  """The runs: ``[{'name', 'seed', 'overrides': {field: value}}]`` in a fixed order (restarts see the same list)."""
  params = spec.get('parameters', {})
  fields = sorted(params)
  if spec.get('method', 'grid') == 'grid':
    points = [dict(zip(fields, combo)) for combo in itertools.product(*(params[f] for f in fields))]
  else:
    rng = np.random.RandomState(int(spec.get('random_seed', 0)))
    points = [{f: _draw(params[f], rng) for f in fields} for _ in range(int(spec['num_samples']))]
  runs = []
  for index, (point, seed) in enumerate(itertools.product(points, spec.get('seeds', [0]))):
    label = '_'.join(f'{f}={_short(v)}' for f, v in point.items())
    name = re.sub(r'[^A-Za-z0-9_.=-]', '', f'{index:03d}_{label}_seed{seed}' if label else f'{index:03d}_seed{seed}')
    runs.append({'name': name, 'seed': int(seed), 'overrides': point})
  return runs


def _short(value) -> str:
  return f'{value:.4g}' if isinstance(value, float) else str(value).replace(' ', '')


def _flag_value(value) -> str:
  if isinstance(value, (list, tuple)):
    return '(' + ','.join(str(v) for v in value) + (',)' if len(value) == 1 else ')')
  return str(value)


def config_path(task: str, spec: dict) -> str:
  """The config file of every run: the spec's ``config``, else ``experiments/configs/<task>.py``."""
  return spec.get('config') or os.path.join(ROOT, 'experiments', 'configs', f'{task}.py')


def check_fields(task: str, spec: dict) -> None:
  """Every swept and fixed field is a dotted leaf path of the config file (ConfigError naming the closest)."""
  config = config_check.load_config_file(config_path(task, spec))
  valid = sorted(config_check.leaf_paths(config))
  for field in [*spec.get('parameters', {}), *spec.get('fixed', {})]:
    if field not in valid:
      raise config_check.ConfigError(config_check.unknown_field_message(field, valid))


def run_command(task: str, spec: dict, run: dict, workdir: str) -> list[str]:
  config = config_path(task, spec)
  command = [sys.executable, '-m', 'experiments.maml_prune', f'--task={task}', f'--config={config}',
             f'--workdir={workdir}', f"--seed={run['seed']}"]
  for field, value in {**spec.get('fixed', {}), **run['overrides']}.items():
    command.append(f'--config.{field}={_flag_value(value)}')
  return command


def run_env() -> dict[str, str]:
  """The environment of a run's process: this process's (with any device Ray assigned), ``ROOT`` importable."""
  return {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}


def run_dir(sweep_dir: str, run: dict) -> str:
  return os.path.join(sweep_dir, 'runs', run['name'])


def dry_run_commands(task: str, spec: dict, sweep_dir: str) -> list[str]:
  """One shell line per run still to do: ``cd ROOT && <the run's maml_prune command>``, as either backend runs it."""
  sweep_dir = os.path.abspath(sweep_dir)
  return [f'cd {shlex.quote(ROOT)} && ' + shlex.join(run_command(task, spec, run, run_dir(sweep_dir, run)))
          for run in pending_runs(spec, sweep_dir)]


def read_summary(sweep_dir: str, run: dict) -> dict | None:
  """The run's ``summary.json``, or None when it is missing, truncated or unreadable (the run is rerun)."""
  try:
    with open(os.path.join(run_dir(sweep_dir, run), 'summary.json')) as f:
      summary = json.load(f)
  except (OSError, ValueError):
    return None
  return summary if isinstance(summary, dict) and 'eval' in summary else None


def is_complete(sweep_dir: str, run: dict) -> bool:
  return read_summary(sweep_dir, run) is not None


def read_early_stop(sweep_dir: str, run: dict) -> dict | None:
  """The run's ``early_stopped.json`` (ASHA stopped it: no summary), or None."""
  try:
    with open(os.path.join(run_dir(sweep_dir, run), EARLY_STOPPED)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def pending_runs(spec: dict, sweep_dir: str) -> list[dict]:
  """The runs still to do: neither complete nor stopped early, in ``expand`` order (logs how many are done)."""
  runs = expand(spec)
  pending = [r for r in runs if not is_complete(sweep_dir, r) and read_early_stop(sweep_dir, r) is None]
  stopped = sum(read_early_stop(sweep_dir, r) is not None for r in runs)
  logging.info('%d runs to do (%d complete already%s).', len(pending), len(runs) - len(pending) - stopped,
               f', {stopped} stopped early' if stopped else '')
  return pending


def _stop_children(running: dict):
  """A SIGTERM / SIGINT handler that ends the running runs (they resume from their checkpoints) and exits."""
  def handler(signum, frame):
    del frame
    for proc, _ in running.values():
      if proc.poll() is None:
        proc.terminate()
    for proc, _ in running.values():
      try:
        proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        proc.kill()
    raise SystemExit(128 + signum)
  return handler


def execute(task: str, spec: dict, sweep_dir: str, parallel: int = 1) -> dict[str, int]:
  """Runs every incomplete run, ``parallel`` processes at a time; returns ``{name: returncode}`` of those run."""
  pending = pending_runs(spec, sweep_dir)
  running, codes = {}, {}
  env = run_env()
  previous = {}
  if threading.current_thread() is threading.main_thread():  # Stopping the sweep stops its runs (no orphans).
    previous = {sig: signal.signal(sig, _stop_children(running)) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    _loop(task, spec, sweep_dir, parallel, pending, running, codes, env)
  finally:
    for sig, old in previous.items():
      signal.signal(sig, old)
  return codes


def _loop(task, spec, sweep_dir, parallel, pending, running, codes, env) -> None:
  while pending or running:
    while pending and len(running) < max(1, parallel):
      run = pending.pop(0)
      folder = run_dir(sweep_dir, run)
      os.makedirs(folder, exist_ok=True)
      log = open(os.path.join(folder, 'run.log'), 'a')  # pylint: disable=consider-using-with
      running[run['name']] = (subprocess.Popen(run_command(task, spec, run, folder), cwd=ROOT, env=env,
                                               stdout=log, stderr=subprocess.STDOUT), log)
      logging.info('started %s', run['name'])
    for name, (proc, log) in list(running.items()):
      if proc.poll() is not None:
        log.close()
        codes[name] = proc.returncode
        del running[name]
        logging.info('%s %s', 'finished' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})', name)
    time.sleep(0.2)


def metric_value(spec: dict, summary: dict):
  """The sweep's metric (``spec['metric']``, a dotted path) in a run's summary."""
  value = summary
  for part in spec.get('metric', DEFAULT_METRIC).split('.'):
    value = value[part]
  return value


def aggregate(spec: dict, sweep_dir: str) -> list[dict]:
  """Writes results.csv, results.md and sweep.png from every run's summary.json; returns the rows."""
  metric = spec.get('metric', DEFAULT_METRIC)
  fields = sorted(spec.get('parameters', {}))
  rows = []
  for run in expand(spec):
    row = {'name': run['name'], 'seed': run['seed'], **run['overrides']}
    summary = read_summary(sweep_dir, run)
    if summary is not None:
      row.update(status='done', metric=metric_value(spec, summary),
                 realised_sparsity=summary['sparsity']['realised_sparsity'],
                 nonzero_params=summary['sparsity']['nonzero_params'],
                 steps_per_sec=summary['timings'].get('steps_per_sec', float('nan')),
                 skipped_steps=summary['timings'].get('skipped_steps', 0))
    else:  # No summary: stopped early by ASHA (its step is in early_stopped.json), or not run / failed.
      row.update(status='missing' if read_early_stop(sweep_dir, run) is None else 'early_stopped',
                 metric=float('nan'))
    rows.append(row)
  columns = ['name', 'seed', *fields, 'status', 'metric', 'realised_sparsity', 'nonzero_params', 'steps_per_sec',
             'skipped_steps']
  with open(os.path.join(sweep_dir, 'results.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns, restval='')
    writer.writeheader()
    writer.writerows(rows)
  groups = _group(rows, fields)
  stopped = sum(r['status'] == 'early_stopped' for r in rows)
  lines = [f'# Sweep results: `{metric}`', '',
           f'{len(rows)} runs, {sum(r["status"] == "done" for r in rows)} done'
           + (f', {stopped} stopped early by ASHA (no summary; see their early_stopped.json).' if stopped else '.'),
           '', '## Mean over seeds (95% CI: 1.96 std / sqrt(n))', '',
           '| ' + ' | '.join([*fields, 'seeds done', 'metric mean', '95% CI']) + ' |',
           '|' + '---|' * (len(fields) + 3)]
  for key, values in groups.items():
    mean, ci = _mean_ci(values)
    lines.append('| ' + ' | '.join([*(_short(k) for k in key), str(len(values)), f'{mean:.4f}', f'{ci:.4f}']) + ' |')
  lines += ['', '## Runs', '', '| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  for row in rows:
    lines.append('| ' + ' | '.join(_short(row.get(c, '')) for c in columns) + ' |')
  with open(os.path.join(sweep_dir, 'results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  _plot(groups, fields, metric, os.path.join(sweep_dir, 'sweep.png'))
  return rows


def _group(rows: list[dict], fields: list[str]) -> dict[tuple, list[float]]:
  groups: dict[tuple, list[float]] = {}
  for row in rows:
    key = tuple(row[f] if not isinstance(row[f], list) else tuple(row[f]) for f in fields)
    groups.setdefault(key, [])
    if row['status'] == 'done' and math.isfinite(row['metric']):
      groups[key].append(float(row['metric']))
  return groups


def _mean_ci(values: list[float]) -> tuple[float, float]:
  if not values:
    return float('nan'), float('nan')
  ci = 1.96 * float(np.std(values, ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else float('nan')
  return float(np.mean(values)), ci


def _plot(groups, fields, metric, out_path) -> None:
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  if not fields:
    fields, groups = ['run'], {('all',): v for v in groups.values()}
  lines: dict[tuple, list] = {}
  for key, values in groups.items():
    lines.setdefault(key[1:], []).append((key[0], *_mean_ci(values)))
  for rest, points in lines.items():
    xs = [p[0] for p in points]
    numeric = all(isinstance(x, (int, float)) for x in xs)
    positions = xs if numeric else list(range(len(xs)))
    label = ', '.join(f'{f}={_short(v)}' for f, v in zip(fields[1:], rest)) or None
    ax.errorbar(positions, [p[1] for p in points], yerr=[0 if math.isnan(p[2]) else p[2] for p in points],
                marker='o', capsize=3, label=label)
    if not numeric:
      ax.set_xticks(positions, [_short(x) for x in xs])
  ax.set_xlabel(fields[0])
  ax.set_ylabel(metric)
  ax.set_title('mean over seeds, 95% CI')
  if len(lines) > 1:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out_path, dpi=110)
  plt.close(fig)


def check_backend_flags() -> None:
  """Raises ValueError naming a flag of the other backend, or a Ray flag out of range."""
  if FLAGS.backend == 'local':
    given = [f'--{name}' for name in RAY_FLAGS if FLAGS[name].present]
    if given:
      verb = 'needs' if len(given) == 1 else 'need'
      raise ValueError(f'{", ".join(given)} {verb} --backend=ray (the local backend runs --parallel processes): pass '
                       '--backend=ray, or drop them.')
    return
  if FLAGS['parallel'].present:
    raise ValueError('--parallel is for --backend=local: with --backend=ray each trial reserves --trial_cpus / '
                     '--trial_gpus / --trial_tpus and Ray runs as many at a time as the cluster holds.')
  if FLAGS.trial_cpus <= 0 or FLAGS.trial_gpus < 0 or FLAGS.trial_tpus < 0:
    raise ValueError(f'--trial_cpus={FLAGS.trial_cpus} must be > 0 and --trial_gpus={FLAGS.trial_gpus}, '
                     f'--trial_tpus={FLAGS.trial_tpus} >= 0.')
  if FLAGS.max_failures < 0:
    raise ValueError(f'--max_failures={FLAGS.max_failures} must be >= 0.')
  if FLAGS.scheduler == 'asha' and not FLAGS.scheduler_metric:
    raise ValueError('--scheduler=asha needs --scheduler_metric=FIELD, a field of the runs\' metrics.jsonl such as '
                     'outer/query_loss (the sweep metric is only known once a run ends).')
  if FLAGS.asha_grace_steps < 0 or FLAGS.asha_reduction_factor <= 1:
    raise ValueError(f'--asha_grace_steps={FLAGS.asha_grace_steps} must be >= 0 and '
                     f'--asha_reduction_factor={FLAGS.asha_reduction_factor} > 1.')


def _exit_with_error(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _execute_on_ray(task: str, spec: dict, sweep_dir: str) -> dict[str, str]:
  """``sweep_ray.execute`` with the flags; a cluster it cannot join, or a scheduler metric the runs do not log, exits
  with one ``error:`` line."""
  # Imports ray: only this backend needs it.
  from experiments import sweep_ray  # pylint: disable=g-import-not-at-top
  try:
    return sweep_ray.execute(task, spec, sweep_dir, sweep_ray.RayOptions(**{name: FLAGS[name].value
                                                                           for name in RAY_FLAGS}))
  except ConnectionError as e:
    _exit_with_error(f'--address={FLAGS.address!r}: no Ray cluster to join ({e}). Start one (ray start --head) and '
                     'pass its address or auto, or leave --address empty to start a local Ray instance.')
  except ValueError as e:
    _exit_with_error(str(e))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    spec = load_spec(FLAGS.sweep)
    check_fields(FLAGS.task, spec)
    check_backend_flags()
  except ValueError as e:  # config_check.ConfigError too.
    _exit_with_error(str(e))
  sweep_dir = os.path.abspath(FLAGS.workdir)  # Runs start in ROOT: a relative workdir would move.
  if FLAGS.dry_run:
    for line in dry_run_commands(FLAGS.task, spec, sweep_dir):
      print(line)
    return
  os.makedirs(sweep_dir, exist_ok=True)
  with open(os.path.join(sweep_dir, 'sweep.json'), 'w') as f:
    json.dump({'task': FLAGS.task, 'spec': spec, 'runs': expand(spec)}, f, indent=2)
  if FLAGS.backend == 'ray':
    outcomes = _execute_on_ray(FLAGS.task, spec, sweep_dir)
  else:
    outcomes = {name: 'done' if code == 0 else 'failed'
                for name, code in execute(FLAGS.task, spec, sweep_dir, FLAGS.parallel).items()}
  rows = aggregate(spec, sweep_dir)
  logging.info('Results: %s (%d/%d runs done)', os.path.join(sweep_dir, 'results.md'),
               sum(r['status'] == 'done' for r in rows), len(rows))
  failed = [name for name, outcome in outcomes.items() if outcome == 'failed']
  if failed:
    raise SystemExit(f'{len(failed)} run(s) failed; see their run.log: {", ".join(failed)}')
  unfinished = [name for name, outcome in outcomes.items() if outcome == 'unfinished']
  if unfinished:
    raise SystemExit(f'{len(unfinished)} run(s) unfinished (the sweep was stopped): rerun the same command to resume '
                     'them from their checkpoints.')


if __name__ == '__main__':
  define_flags()
  app.run(main)
