"""Config fields of the run machinery (devices, non-finite policy, TensorBoard) and their validation.

Configs that predate these fields still work: ``get`` falls back to ``DEFAULTS``.
``validate`` runs from ``train.validate_config``, before anything compiles, and
also checks every field's type against the task's default config
(``experiments/configs/<task>.py``), so a config built in Python with a wrong
type fails with the field named instead of deep inside a trace.
"""

import importlib
import numbers

import ml_collections

from metaprune_jax.meta import guards
from metaprune_jax.nets import mlp

DEFAULTS = {
    'num_devices': 1,      # Devices the task batch is sharded over; 0 = all that help (sharding.resolve_num_devices).
    'distributed': False,  # Call jax.distributed.initialize() first (multi-host TPU pods, SLURM GPU clusters).
    'nonfinite': 'stop',   # 'stop': end the run naming the step; 'skip': drop the update and count it.
    'tensorboard': True,   # TensorBoard event files in workdir/tensorboard when tensorboardX is installed.
    'steps_per_call': 1,   # Meta-steps per jitted call (a lax.scan); 1 near log / checkpoint lines.
}


def get(config: ml_collections.ConfigDict, field: str):
  return config.get(field, DEFAULTS[field])


def _fail(field: str, value, rule: str) -> None:
  raise ValueError(f'--config.{field}={value!r} is invalid: {rule}.')


def _kind(value) -> str:
  if isinstance(value, bool):
    return 'bool'
  if isinstance(value, numbers.Integral):
    return 'int'
  if isinstance(value, numbers.Real):
    return 'float'
  if isinstance(value, (tuple, list)):
    return 'sequence'
  if isinstance(value, str):
    return 'str'
  return type(value).__name__


def _check_types(config: ml_collections.ConfigDict) -> None:
  """Every field also in the task's default config has that field's type (ints are accepted for floats)."""
  try:
    defaults = importlib.import_module(f'experiments.configs.{config.task}').get_config()
  except ImportError:
    return
  for field, default in defaults.items():
    if field not in config or default is None or config[field] is None:
      continue
    want, got = _kind(default), _kind(config[field])
    if want != got and not (want == 'float' and got == 'int'):
      _fail(field, config[field], f'expected a {want} (like the default {default!r}), got a {got}')


def _check_range(config, field: str) -> None:
  if field in config:
    value = tuple(config[field])
    if len(value) != 2 or not float(value[0]) <= float(value[1]):
      _fail(field, value, 'must be a (low, high) pair with low <= high')


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the run-machinery fields and the model / task fields; errors name the flag and the allowed values."""
  _check_types(config)
  num_devices = get(config, 'num_devices')
  if not isinstance(num_devices, int) or isinstance(num_devices, bool) or num_devices < 0:
    _fail('num_devices', num_devices, 'must be an integer >= 0 (0 = every device)')
  if num_devices > 1 and int(config.meta_batch_size) % num_devices:
    _fail('num_devices', num_devices, f'must divide --config.meta_batch_size={config.meta_batch_size} (the task '
          'batch is split evenly across devices)')
  steps_per_call = get(config, 'steps_per_call')
  if not isinstance(steps_per_call, int) or isinstance(steps_per_call, bool) or steps_per_call < 1:
    _fail('steps_per_call', steps_per_call, 'must be a positive integer (1 = one jitted call per meta-step)')
  if get(config, 'nonfinite') not in guards.NONFINITE_MODES:
    _fail('nonfinite', get(config, 'nonfinite'), f'use one of {guards.NONFINITE_MODES}')
  for field in ('distributed', 'tensorboard', 'first_order', 'adapt_gates', 'dense_reference'):
    value = get(config, field) if field in DEFAULTS else config.get(field, False)
    if not isinstance(value, bool):
      _fail(field, value, 'must be True or False')
  if 'activation' in config and config.activation not in mlp.ACTIVATIONS:
    _fail('activation', config.activation, f'use one of {sorted(mlp.ACTIVATIONS)}')
  if 'hidden_sizes' in config and not all(int(w) > 0 for w in config.hidden_sizes):
    _fail('hidden_sizes', tuple(config.hidden_sizes), 'every layer width must be a positive integer')
  for field in ('amplitude_range', 'phase_range', 'input_range'):
    _check_range(config, field)
  if int(config.seed) < 0:
    _fail('seed', config.seed, 'must be >= 0')
  if float(config.get('grad_clip_norm', 0.0)) < 0:
    _fail('grad_clip_norm', config.grad_clip_norm, 'must be >= 0 (0 disables clipping)')
