"""Meta-steps per second of the ``sequence`` and ``strokes`` meta-steps, dense and gated; prints JSON.

Each variant is the launcher's own step (``experiments/configs/{sequence,strokes}.py``
through ``build.build`` and ``Experiment.make_step``: tasks sampled inside the
jitted step, inner loop and gates as configured), with ``SECTION.FIELD=VALUE``
overrides from ``--sequence_overrides`` / ``--strokes_overrides`` (e.g. ``model.hidden_size=64``). Variants:
dense (``gates.mask=none``) and gated (the config's gates: per-weight for
``sequence``, one gate per hidden unit for ``strokes``). Compile (first call) is
timed separately; then ``--rounds`` rounds in which every variant of a task runs
``--sequence_steps`` (``--strokes_steps``) calls round-robin, ``block_until_ready`` after each; medians reported.

Usage: python -m benchmarks.rnn_step_speed [--tasks=sequence,strokes --sequence_steps=50 --strokes_steps=5 --rounds=5]
(``--steps`` / ``--repeats`` belong to ``benchmarks.meta_step_speed``, whose timing loop this reuses.)
"""

import json
import os
import platform

import jax
from absl import app
from absl import flags

from benchmarks import meta_step_speed
from experiments import build
from experiments.configs import sequence as sequence_config
from experiments.configs import strokes as strokes_config

_TASKS = flags.DEFINE_list('tasks', ['sequence', 'strokes'], 'Task families to time.')
_STEPS = flags.DEFINE_integer('sequence_steps', 50, 'Meta-steps per timing for sequence.')
_STROKES_STEPS = flags.DEFINE_integer('strokes_steps', 5, 'Meta-steps per timing for strokes (slow).')
_REPEATS = flags.DEFINE_integer('rounds', 5, 'Timings per variant (median reported).')
_SEQUENCE_OVERRIDES = flags.DEFINE_list('sequence_overrides', [], 'SECTION.FIELD=VALUE config overrides.')
_STROKES_OVERRIDES = flags.DEFINE_list('strokes_overrides', [], 'SECTION.FIELD=VALUE config overrides.')

_CONFIGS = {'sequence': sequence_config, 'strokes': strokes_config}


def _config(task: str, mask: str, overrides):
  config = _CONFIGS[task].get_config()
  config.gates.mask = mask
  for item in overrides:
    path, value = item.split('=', 1)
    section, field = path.split('.')
    current = config[section][field]
    config[section][field] = value if isinstance(current, str) else type(current)(
        json.loads(value.lower() if value in ('True', 'False') else value))
  build.check(config)
  return config


def _variant(config):
  """The launcher's jitted meta-step (gates with the net's hidden-unit coupling, hardening) and its state."""
  exp = build.build(config)
  return exp.make_step(1), exp.init_state()


def _settings(config) -> dict:
  paths = ('model.cell', 'model.hidden_size', 'outer.meta_batch_size', 'task.num_shots', 'task.num_query',
           'inner.num_inner_steps', 'inner.first_order', 'gates.granularity', 'execution.python_loop',
           'task.context_length', 'task.horizon', 'task.ways', 'task.num_points')
  return {p: config[p.split('.')[0]][p.split('.')[1]] for p in paths if p.split('.')[1] in config[p.split('.')[0]]}


def main(argv):
  del argv
  out = {'benchmark': 'rnn_meta_step_speed', 'steps_per_timing': {}, 'repeats': _REPEATS.value, 'tasks': {}}
  for task in _TASKS.value:
    overrides = _SEQUENCE_OVERRIDES.value if task == 'sequence' else _STROKES_OVERRIDES.value
    steps = _STEPS.value if task == 'sequence' else _STROKES_STEPS.value
    configs = {mask_name: _config(task, mask, overrides)
               for mask_name, mask in (('dense', 'none'), ('gated', 'hard_concrete'))}
    results = meta_step_speed._time_interleaved(  # pylint: disable=protected-access
        {name: _variant(config) for name, config in configs.items()}, steps, _REPEATS.value)
    results['gated_over_dense_time'] = round(
        results['dense']['steps_per_sec_median'] / results['gated']['steps_per_sec_median'], 3)
    out['steps_per_timing'][task] = steps
    out['tasks'][task] = {'config': _settings(configs['gated']), 'results': results}
  out['load_average'] = list(os.getloadavg())
  out['machine'] = {'backend': jax.default_backend(), 'devices': [str(d) for d in jax.devices()],
                    'jax': jax.__version__, 'python': platform.python_version(),
                    'processor': platform.processor(), 'cpus': os.cpu_count()}
  print(json.dumps(out, indent=2))


if __name__ == '__main__':
  app.run(main)
