"""Meta-train a sparse MAML model: ``python -m experiments.maml_prune --task=sinusoid``.

Flags: ``--task`` picks ``experiments/configs/<task>.py`` (or pass ``--config=FILE``);
``--config.FIELD=VALUE`` overrides any config field; ``--workdir`` holds the
outputs (rerun with the same workdir to resume); ``--seed`` overrides
``config.seed``.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import checkpoint
from experiments import ops_config
from experiments import problems
from experiments import train
from metaprune_jax.meta import sharding

_CONFIG_DIR = os.path.join(os.path.dirname(__file__), 'configs')



_TASK_NAME = problems.task_from_argv(sys.argv)
flags.DEFINE_string('task', 'sinusoid', f'Task family: one of {sorted(problems.PROBLEMS)}.')
flags.DEFINE_string('workdir', None, 'Output folder (default: runs/<task>_seed<seed>). Reruns resume.')
flags.DEFINE_integer('seed', None, 'Overrides config.seed.')
config_flags.DEFINE_config_file(
    'config', os.path.join(_CONFIG_DIR, f'{_TASK_NAME}.py') if _TASK_NAME in problems.PROBLEMS else None,
    'Config file; defaults to experiments/configs/<task>.py.', lock_config=True)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.task not in problems.PROBLEMS:
    raise app.UsageError(f'--task={FLAGS.task!r} is unknown; valid tasks: {", ".join(sorted(problems.PROBLEMS))}.')
  config = FLAGS.config
  checkpoint.quiet_orbax_logs()
  sharding.initialize_distributed(ops_config.get(config, 'distributed'))  # Before any other JAX call.
  with config.unlocked():
    config.task = FLAGS.task
    if FLAGS.seed is not None:
      config.seed = FLAGS.seed
  workdir = FLAGS.workdir or os.path.join('runs', f'{config.task}_seed{config.seed}')
  logging.info('Config:\n%s', config)
  try:
    train.run(config, workdir)
  except ValueError as e:
    raise app.UsageError(str(e)) from e


if __name__ == '__main__':
  app.run(main)
