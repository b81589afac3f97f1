"""Sweeps on Ray Tune: ``python -m experiments.sweep ... --backend=ray [--address=HOST:PORT|auto]``.

Each run of ``experiments.sweep`` still to do is one Tune trial (a function
trainable) that runs the run's ``experiments.maml_prune`` command, the local
backend's, in the run's folder ``DIR/runs/<name>``: a retried trial (a failure,
up to ``max_failures``) or a restarted sweep resumes the run from its checkpoint,
and a seed gives the same numbers on either backend. The run inherits the trial
worker's environment, so the devices Ray assigned it (``CUDA_VISIBLE_DEVICES``,
``TPU_VISIBLE_CHIPS``) are the only ones it sees; with a fraction of a GPU per
trial, JAX preallocates that fraction of 75% of the GPU unless
``XLA_PYTHON_CLIENT_MEM_FRACTION`` is set.

While a run trains, its trial reports each new ``metrics.jsonl`` line to Tune
(``step`` is the time axis); the last line is held back and reported with the
sweep metric once ``summary.json`` is written, so ASHA never stops a run that
finished training. A trial Tune stops (ASHA) kills its run (and a run dies with
its trial's worker: ``PR_SET_PDEATHSIG`` on Linux); such a run gets
``early_stopped.json`` (the step and scheduler metric where it stopped) instead
of a summary, and the sweep's results mark it ``early_stopped``.

Restarting: rerun the same command. Finished and early-stopped runs are skipped
and the others resume from their checkpoints, in a new Tune experiment under
``DIR/ray_results/`` (Tune's own restore is not used: the run folders already
hold all the state, and the trials left change from start to start). On a
multi-node cluster the repository and ``DIR`` must be at the same paths on every
node (a shared filesystem).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import NamedTuple

import ray
from absl import logging
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from experiments import config_check
from experiments import sweep

# Test-only: a run name; the first attempt of that run's trial SIGKILLs its own Ray worker once the run has a
# checkpoint (tests/experiments/test_sweep_ray.py checks that the trial is retried and the run resumes).
TEST_KILL_ENV = 'METAPRUNE_SWEEP_TEST_KILL_WORKER'
TEST_KILLED = 'test_killed_worker'
POLL_SECONDS = 0.1
# Run as `python -c _DIE_WITH_PARENT python ARGS...`: asks Linux to SIGKILL the process when the thread that started
# it ends (a killed Ray worker), then becomes `python ARGS...` (the flag survives exec).
_DIE_WITH_PARENT = ('import ctypes, os, signal, sys\n'
                    'ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n'  # 1: PR_SET_PDEATHSIG.
                    'os.getppid() == int(sys.argv[1]) or os._exit(137)\n'  # The parent died before prctl.
                    'os.execv(sys.argv[2], sys.argv[2:])')


class RayOptions(NamedTuple):
  """The ``--backend=ray`` flags of ``experiments.sweep`` (see their help)."""
  address: str = ''
  trial_cpus: float = 1.0
  trial_gpus: float = 0.0
  trial_tpus: float = 0.0
  max_failures: int = 2
  scheduler: str = 'none'
  scheduler_metric: str = ''
  scheduler_mode: str = 'min'
  asha_grace_steps: int = 0
  asha_reduction_factor: float = 4.0


USAGE_STATS_ENV = 'RAY_USAGE_STATS_ENABLED'


def connect(address: str) -> bool:
  """Joins the cluster at ``address`` (``auto``: the running one), or starts a local one when it is empty; nothing
  when this process is connected already. Returns whether it connected (the caller then shuts Ray down)."""
  if ray.is_initialized():
    return False
  # Ray reports usage statistics to a remote server unless told not to; a sweep sends nothing off the machine
  # unless the user opts in (RAY_USAGE_STATS_ENABLED=1).
  os.environ.setdefault(USAGE_STATS_ENV, '0')
  runtime_env = {'env_vars': {'PYTHONPATH': sweep.ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}}
  if address:
    ray.init(address=address, runtime_env=runtime_env)
  else:
    ray.init(include_dashboard=False, runtime_env=runtime_env)
  return True


def execute(task: str, spec: dict, sweep_dir: str, options: RayOptions) -> dict[str, str]:
  """Runs every run still to do as a Tune trial; returns ``{name: outcome}`` of those.

  An outcome is ``done``, ``early_stopped`` (by ASHA), ``failed`` (after ``max_failures`` retries) or
  ``unfinished`` (the sweep was stopped first; a rerun resumes it).

  Args:
    task: the task family (``--task``).
    spec: the checked sweep dict (``sweep.load_spec``).
    sweep_dir: the sweep folder, an absolute path every node sees.
    options: resources, retries and scheduler.
  """
  pending = sweep.pending_runs(spec, sweep_dir)
  if not pending:
    return {}
  steps = _num_outer_steps(task, spec, pending)
  job = {'task': task, 'spec': spec, 'sweep_dir': sweep_dir, 'runs': {r['name']: r for r in pending},
         'steps': steps, 'trial_gpus': options.trial_gpus, 'test_kill': os.environ.get(TEST_KILL_ENV, '')}
  started = connect(options.address)
  try:
    results = _tuner(job, options).fit()
  except tune.TuneError as e:  # Tune checks that every report holds the scheduler's metric.
    if 'did not include the specified metric' not in str(e):
      raise
    raise ValueError(f'--scheduler_metric={options.scheduler_metric} is not a field of the runs\' metrics.jsonl; '
                     f'they log {_logged_fields(sweep_dir, pending)}.') from None
  finally:
    if started:
      ray.shutdown()
  return _outcomes(sweep_dir, pending, {r.config['name']: r.error for r in results if r.config and r.error})


def _tuner(job: dict, options: RayOptions) -> tune.Tuner:
  """One trial per run of ``job['runs']``, in ``DIR/ray_results/tune_<time>``."""
  trainable = tune.with_resources(tune.with_parameters(_trial, job=job), _resources(options))
  return tune.Tuner(
      trainable, param_space={'name': tune.grid_search(list(job['runs']))},
      tune_config=tune.TuneConfig(scheduler=_scheduler(options, max(job['steps'].values())), reuse_actors=False,
                                  trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
      run_config=tune.RunConfig(name=time.strftime('tune_%Y%m%d-%H%M%S'),
                                storage_path=os.path.join(job['sweep_dir'], 'ray_results'), verbose=1,
                                failure_config=tune.FailureConfig(max_failures=options.max_failures),
                                callbacks=[_MarkEarlyStopped(job['sweep_dir'], job['runs'], options)]))


def _outcomes(sweep_dir: str, runs: list[dict], errors: dict[str, Exception]) -> dict[str, str]:
  """``{name: outcome}`` (``execute``) from the run folders and the errors of the trials that failed."""
  outcomes = {}
  for run in runs:
    if sweep.is_complete(sweep_dir, run):
      outcomes[run['name']] = 'done'
    elif sweep.read_early_stop(sweep_dir, run) is not None:
      outcomes[run['name']] = 'early_stopped'
    elif run['name'] in errors:
      outcomes[run['name']] = 'failed'
      logging.error('%s FAILED: %s', run['name'], str(errors[run['name']]).strip().splitlines()[-1:])
    else:  # The sweep was stopped (Ctrl-C) before the run ended.
      outcomes[run['name']] = 'unfinished'
  return outcomes


def _logged_fields(sweep_dir: str, runs: list[dict]) -> list[str]:
  """The fields of the first ``metrics.jsonl`` line among ``runs`` (none when no run logged yet)."""
  for run in runs:
    records = _MetricsTail(os.path.join(sweep.run_dir(sweep_dir, run), 'metrics.jsonl')).new_records()
    if records:
      return sorted(records[0])
  return []


def _trial_name(trial) -> str:
  return trial.config['name']


def _resources(options: RayOptions) -> tune.PlacementGroupFactory:
  """One bundle per trial: its CPUs, GPUs and TPU chips (zero amounts left out)."""
  bundle = {'CPU': options.trial_cpus, 'GPU': options.trial_gpus, 'TPU': options.trial_tpus}
  return tune.PlacementGroupFactory([{name: amount for name, amount in bundle.items() if amount > 0}])


def _num_outer_steps(task: str, spec: dict, runs: list[dict]) -> dict[str, int]:
  """``{name: outer steps}`` of each run: its override, else the spec's fixed value, else the config file's."""
  config = config_check.load_config_file(sweep.config_path(task, spec))
  field = 'outer.num_outer_steps'
  default = spec.get('fixed', {}).get(field, config.outer.num_outer_steps)
  return {r['name']: int(r['overrides'].get(field, default)) for r in runs}


def _scheduler(options: RayOptions, max_steps: int) -> ASHAScheduler | None:
  """ASHA on ``scheduler_metric`` against outer steps, or None (every trial runs to its end)."""
  if options.scheduler == 'none':
    return None
  # max_t past the last step: reaching max_t would stop a trial while its run evaluates.
  return ASHAScheduler(time_attr='step', metric=options.scheduler_metric, mode=options.scheduler_mode,
                       max_t=max_steps + 1, grace_period=options.asha_grace_steps or max(1, max_steps // 10),
                       reduction_factor=options.asha_reduction_factor)


class _MarkEarlyStopped(tune.Callback):
  """Writes ``early_stopped.json`` into the folder of a run whose trial the scheduler stopped before its summary."""

  def __init__(self, sweep_dir: str, runs: dict[str, dict], options: RayOptions):
    self._sweep_dir, self._runs, self._options = sweep_dir, runs, options

  def on_trial_complete(self, iteration, trials, trial, **info):
    del iteration, trials, info
    run = self._runs[trial.config['name']]
    last = trial.last_result or {}
    if not last.get('done') or sweep.is_complete(self._sweep_dir, run):  # Not stopped by the scheduler.
      return
    marker = {'step': last.get('step'), 'scheduler': self._options.scheduler,
              'scheduler_metric': self._options.scheduler_metric,
              'value': last.get(self._options.scheduler_metric)}
    with open(os.path.join(sweep.run_dir(self._sweep_dir, run), sweep.EARLY_STOPPED), 'w') as f:
      json.dump(marker, f, indent=2)
    logging.info('%s stopped early at step %s (%s)', run['name'], marker['step'], self._options.scheduler)


class _MetricsTail:
  """The records of a run's ``metrics.jsonl`` past the last one taken (the file is rewritten on a resume)."""

  def __init__(self, path: str):
    self._path, self._seen, self._last_step = path, None, -1

  def new_records(self) -> list[dict]:
    try:
      stat = os.stat(self._path)
      if (stat.st_ino, stat.st_size, stat.st_mtime_ns) == self._seen:
        return []
      with open(self._path) as f:
        text = f.read()
    except OSError:
      return []
    self._seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    records = []
    for line in text.splitlines(keepends=True):
      if not line.endswith('\n'):
        break  # Being written.
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if record.get('step', -1) > self._last_step:
        records.append({k: v for k, v in record.items() if isinstance(v, (int, float))})
        self._last_step = record['step']
    return records


def _start(command: list[str], folder: str, trial_gpus: float) -> subprocess.Popen:
  """Starts the run in ``ROOT`` with this worker's environment, its output appended to ``folder/run.log``."""
  env = sweep.run_env()
  if 0 < trial_gpus < 1:
    env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', f'{0.75 * trial_gpus:.3f}')
  if sys.platform.startswith('linux'):
    command = [sys.executable, '-c', _DIE_WITH_PARENT, str(os.getpid()), *command]
  with open(os.path.join(folder, 'run.log'), 'a') as log:
    devices = ''.join(f' {name}={os.environ[name]}' for name in ('CUDA_VISIBLE_DEVICES', 'TPU_VISIBLE_CHIPS')
                      if name in os.environ)
    log.write(f'--- ray trial on {socket.gethostname()} (worker pid {os.getpid()}){devices}\n')
    log.flush()
    return subprocess.Popen(command, cwd=sweep.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _maybe_kill_for_test(run: dict, folder: str, job: dict) -> None:
  """The test hook (``TEST_KILL_ENV``): SIGKILLs this worker once, when the named run has a checkpoint."""
  if job['test_kill'] != run['name'] or os.path.exists(os.path.join(folder, TEST_KILLED)):
    return
  checkpoints = os.path.join(folder, 'checkpoints')
  if os.path.isdir(checkpoints) and any(name.isdigit() for name in os.listdir(checkpoints)):
    with open(os.path.join(folder, TEST_KILLED), 'w') as f:
      f.write(f'{os.getpid()}\n')
    os.kill(os.getpid(), signal.SIGKILL)


def _train(run: dict, folder: str, job: dict) -> None:
  """Runs the run's maml_prune, reporting each metrics line but the last; raises if it ends without a summary."""
  os.makedirs(folder, exist_ok=True)
  tail = _MetricsTail(os.path.join(folder, 'metrics.jsonl'))
  proc = _start(sweep.run_command(job['task'], job['spec'], run, folder), folder, job['trial_gpus'])
  try:
    running = True
    while running:
      running = proc.poll() is None  # Then read: once the run has ended, all its lines are in.
      for record in tail.new_records():
        if record['step'] < job['steps'][run['name']]:  # The last step's line goes with the sweep metric.
          tune.report(record)
      if running:
        _maybe_kill_for_test(run, folder, job)
        time.sleep(POLL_SECONDS)
  finally:  # Tune stopped the trial (SystemExit in report), or something failed: end the run too.
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  if proc.returncode != 0:
    raise RuntimeError(f'{run["name"]}: maml_prune exited with status {proc.returncode}; see {folder}/run.log')
  if not sweep.is_complete(job['sweep_dir'], run):
    raise RuntimeError(f'{run["name"]}: maml_prune ended without a readable summary.json; see {folder}/run.log')


def _trial(config: dict, job: dict) -> None:
  """The trainable: trains run ``config['name']`` (unless a previous attempt finished it), then reports its last
  metrics line with the sweep metric of its summary (``metric``)."""
  run = job['runs'][config['name']]
  folder = sweep.run_dir(job['sweep_dir'], run)
  if not sweep.is_complete(job['sweep_dir'], run):
    _train(run, folder, job)
  records = _MetricsTail(os.path.join(folder, 'metrics.jsonl')).new_records()
  value = sweep.metric_value(job['spec'], sweep.read_summary(job['sweep_dir'], run))
  tune.report({**(records[-1] if records else {}), 'step': job['steps'][run['name']], 'metric': value})
