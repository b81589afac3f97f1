"""Meta-train a sparse MAML model: ``python -m experiments.maml_prune --task=sinusoid``.

Flags: ``--task`` picks ``experiments/configs/<task>.py`` (or pass ``--config=FILE``,
whose ``task.name`` is the task); ``--config.SECTION.FIELD=VALUE`` overrides any
config field (e.g. ``--config.sparsity.target_sparsity=0.95``); ``--workdir``
holds the outputs, a local folder or a URI such as ``gs://bucket/run`` (rerun
with the same workdir to resume); ``--seed`` overrides ``config.seed``. A
multi-host run (``--config.run.distributed=True``, one launcher per host) joins
the cluster JAX detects, or the one ``--coordinator_address``,
``--num_processes`` and ``--process_id`` name; process 0 writes the run's
files. A bad task, config file or field, a resume with another config, a
workdir in use, missing or damaged data, a damaged checkpoint, paths or
``--config.run.distributed`` without a cluster fail with one ``error:`` line and
exit status 2; a diverging run or an I/O failure (disk full) with one line
naming what failed and the newest intact checkpoint, and exit status 1. The
``error:`` line is the last line printed (the config is logged only once the
run is set up, and orbax's tracebacks are filtered).
"""

import errno
import os
import sys

import jax
from absl import app
from absl import flags
from ml_collections import config_flags

from metaprune_jax import checkpoint
from experiments import build
from experiments import compilation_cache
from experiments import config_check
from experiments import problems
from experiments import train
from experiments import workdir as workdir_lib
from metaprune_jax.meta import sharding

_CONFIG_DIR = os.path.join(os.path.dirname(__file__), 'configs')
_IO_FIXES = {errno.ENOSPC: 'free disk space', errno.EDQUOT: 'free space in your quota',
             errno.EFBIG: 'raise the file-size limit (ulimit -f) or free disk space'}


def _config_path(task: str) -> str:
  return os.path.join(_CONFIG_DIR, f'{task}.py')


def _exit_with_error(message: str, status: int = 2) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(status)


def _initialize_distributed(enabled: bool) -> None:
  """``sharding.initialize_distributed``; exits with one ``error:`` line when there is no cluster to join."""
  cluster = {'coordinator_address': FLAGS.coordinator_address, 'num_processes': FLAGS.num_processes,
             'process_id': FLAGS.process_id}
  if not enabled and any(value is not None for value in cluster.values()):
    given = ', '.join(f'--{name}' for name, value in cluster.items() if value is not None)
    _exit_with_error(f'{given} given without --config.run.distributed=True: pass it as well for a multi-host run '
                     '(one launcher per host), or drop them.')
  try:
    sharding.initialize_distributed(enabled, **cluster)
  except (ValueError, RuntimeError, TypeError) as e:
    cause = str(e).rstrip('.')
    _exit_with_error(f'--config.run.distributed=True, but jax.distributed.initialize() found no cluster to join '
                     f'({cause}). Start one launcher per host under a cluster manager JAX detects (SLURM, Open MPI, '
                     'a Cloud TPU pod), or drop --config.run.distributed on one host (--config.run.num_devices=0 '
                     'uses every local device).')


def _io_failure(error: OSError, workdir: str) -> str:
  """One line for a failed write or read: what failed and the newest checkpoint, which is intact (orbax renames a
  checkpoint into place only once it is complete)."""
  if isinstance(error, (checkpoint.CheckpointWriteError, workdir_lib.WriteError)):
    what = str(error)
  else:
    what = f'{type(error).__name__} in {workdir}: {error}'
  try:
    found = checkpoint.list_checkpoints(workdir)
  except OSError:
    found = None
  fix = _IO_FIXES.get(error.errno, 'fix the cause')
  if found:
    kept = (f'Nothing already written was lost: the checkpoints in {checkpoint.checkpoint_dir(workdir)} are intact '
            f'(newest: step {found[-1][0]}); {fix} and rerun the same command to resume from it.')
  elif found is None:
    kept = f'The checkpoints are written atomically: {fix} and rerun the same command to resume.'
  else:
    kept = f'No checkpoint was written yet: {fix} and rerun the same command.'
  return f'{what}. {kept}'


def precheck(argv: list[str]) -> str:
  """The task of the command line; exits with one ``error:`` line if ``--task``, ``--config`` or a
  ``--config.*`` override is wrong (before absl's flag parsing, which would print a traceback)."""
  try:
    return config_check.precheck_argv(argv, sorted(problems.PROBLEMS), _config_path)
  except config_check.ConfigError as e:
    _exit_with_error(str(e))


flags.DEFINE_string('task', None, f'Task family: one of {sorted(problems.PROBLEMS)} (default: the --config '
                    "file's task.name, else sinusoid).")
flags.DEFINE_string('workdir', None, 'Output folder, local or a URI such as gs://bucket/run (default: '
                    'runs/<task>_seed<seed>). Reruns resume.')
flags.DEFINE_integer('seed', None, 'Overrides config.seed.')
flags.DEFINE_string('coordinator_address', None, 'With --config.run.distributed=True: host:port of process 0 '
                    '(default: detected from the cluster, or $JAX_COORDINATOR_ADDRESS).')
flags.DEFINE_integer('num_processes', None, 'With --config.run.distributed=True: the number of launchers '
                     '(default: detected from the cluster).')
flags.DEFINE_integer('process_id', None, 'With --config.run.distributed=True: this launcher\'s index, 0 to '
                     'num_processes - 1 (default: detected from the cluster).')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = FLAGS.config
  if FLAGS.seed is not None:
    with config.unlocked():
      config.seed = FLAGS.seed
  try:
    build.check(config)  # Before anything is logged: a bad value is the only line printed.
  except ValueError as e:
    _exit_with_error(str(e))
  checkpoint.quiet_orbax_logs()
  _initialize_distributed(config.run.distributed)  # Before any other JAX call.
  compilation_cache.enable()
  workdir = FLAGS.workdir or os.path.join('runs', f'{config.task.name}_seed{config.seed}')
  try:  # train.run logs the config once the run is set up (after the data, the lock, the resume check).
    train.run(config, workdir)
  except (ValueError, FileNotFoundError, PermissionError) as e:  # A config, data or path the user can fix.
    _exit_with_error(str(e) or type(e).__name__)
  except FloatingPointError as e:  # A diverging run: the message names the last good checkpoint.
    _exit_with_error(str(e), status=1)
  except OSError as e:  # Disk full, I/O: checkpoints are written atomically, so the last complete one is intact.
    _exit_with_error(_io_failure(e, workdir), status=1)


if __name__ == '__main__':
  jax.config.config_with_absl()  # --jax_* flags (e.g. --jax_compilation_cache_dir, --jax_platforms) work here.
  _TASK = precheck(sys.argv)
  config_flags.DEFINE_config_file('config', _config_path(_TASK),
                                  'Config file; defaults to experiments/configs/<task>.py.', lock_config=True)
  app.run(main)
