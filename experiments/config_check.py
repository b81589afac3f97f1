"""Config fields checked against the task's default config: names (with a suggestion) and types.

A config's fields are its dotted leaf paths (``sparsity.target_sparsity``). Every
path of a config must exist in the default config of its task (the file
``experiments/configs/<task.name>.py``, or ``frontier_<task.name>.py`` for a
config with a ``frontier`` section), with that field's type; an unknown field
names the closest valid path::

    --config.target_sparsty is not a config field; did you mean --config.sparsity.target_sparsity?

``precheck_argv`` runs the same check on a launcher's raw ``--config.*``
overrides before absl parses them, so a typo gives one line, not a traceback.
"""

import difflib
import importlib
import importlib.util
import numbers
import os

import ml_collections

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')

# Flat field names of the configs before they had sections, whose leaf name changed (others kept theirs).
RENAMED = {
    'task': 'task.name',
    'inner_python_loop': 'execution.python_loop',
    **{f'eval_{name}': f'eval.{name}' for name in ('num_tasks', 'shots', 'steps', 'num_query', 'inner_lr',
                                                     'ways', 'chunk_size', 'split')},
    **{f'frontier_{name}': f'frontier.{name}' for name in ('methods', 'sparsities', 'seeds')},
}

# Fields whose value for a run saved before they existed is not today's default (a new default that changes
# behaviour): that run behaved as this value says.
PREDATING = {
    'gates.meta_pruner_embedding': 'tanh',
}

# Fields added after results were first keyed by a hash of the whole config (the frontier's points), with the
# value at which they change nothing (how every run before them behaved). ``inert_fields_dropped`` leaves them out
# of such a hash at that value, so adding a field does not orphan the points computed before it. Add a new field
# here when it has such a value.
INERT_VALUES = {
    'num_seeds': 1,
    'outer.reptile_update': 'adam',
    'outer.reptile_step_size': 1.0,          # Read only with reptile_update='interpolate'.
    'outer.reptile_step_size_final': 0.0,
    'gates.meta_pruner_modulation_gain': 1.0,
    'sparsity.count': 'weights',
    'sparsity.harden_scope': 'global',
}


class ConfigError(ValueError):
  """A config field that does not exist, is missing, or has the wrong type."""


def invalid(path: str, value, rule: str) -> ValueError:
  """The one error format for a field's value: ``--config.PATH=VALUE is invalid: RULE.``"""
  return ValueError(f'--config.{path}={value!r} is invalid: {rule}.')


def require(ok: bool, path: str, value, rule: str) -> None:
  """Raises ``invalid(path, value, rule)`` unless ``ok``."""
  if not ok:
    raise invalid(path, value, rule)


def leaf_paths(config: ml_collections.ConfigDict, prefix: str = '') -> dict:
  """``{dotted path: value}`` of every leaf (FieldReferences resolved)."""
  out = {}
  for name, value in config.items():
    path = f'{prefix}{name}'
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(leaf_paths(ml_collections.ConfigDict(value) if isinstance(value, dict) else value, f'{path}.'))
    else:
      out[path] = value
  return out


def inert_fields_dropped(leaves: dict) -> dict:
  """``leaf_paths`` output without the ``INERT_VALUES`` fields that hold their inert value (``reptile_step_size*``
  too whenever ``outer.reptile_update`` is 'adam', which ignores them)."""
  adam = leaves.get('outer.reptile_update', 'adam') == 'adam'
  def inert(path, value):
    if path not in INERT_VALUES:
      return False
    return value == INERT_VALUES[path] or (adam and path.startswith('outer.reptile_step_size'))
  return {path: value for path, value in leaves.items() if not inert(path, value)}


def closest(path: str, valid: list[str]) -> str | None:
  """The valid dotted path nearest ``path``: by full path and by leaf name (``target_sparsty`` finds
  ``sparsity.target_sparsity``); None when nothing is near."""
  if path in RENAMED and RENAMED[path] in valid:
    return RENAMED[path]
  leaf = path.rsplit('.', 1)[-1]
  same_leaf = [p for p in valid if p.rsplit('.', 1)[-1] == leaf]
  if len(same_leaf) > 1 and '.' not in path:  # A flat name: eval fields had an eval_ prefix then.
    same_leaf = [p for p in same_leaf if not p.startswith('eval.')]
  if len(same_leaf) == 1:
    return same_leaf[0]
  best, best_score = None, 0.6
  for candidate in valid:
    score = max(difflib.SequenceMatcher(None, path, candidate).ratio(),
                difflib.SequenceMatcher(None, leaf, candidate.rsplit('.', 1)[-1]).ratio())
    if score > best_score:
      best, best_score = candidate, score
  return best


def unknown_field_message(path: str, valid: list[str]) -> str:
  """One line naming ``path`` and the closest valid path (or the sections)."""
  message = f'--config.{path} is not a config field'
  sections = sorted({p.split('.')[0] for p in valid if '.' in p})
  if path in RENAMED and RENAMED[path] in valid:
    return f'{message}; did you mean --config.{RENAMED[path]}?'
  if path in sections or any(p.startswith(path + '.') for p in valid):
    return f'{message}: it is a section; set its fields, e.g. --config.{path}.FIELD=VALUE.'
  suggestion = closest(path, valid)
  if suggestion is not None:
    return f'{message}; did you mean --config.{suggestion}?'
  return f'{message}; the sections are {", ".join(sections)} (--config.SECTION.FIELD=VALUE).'


def kind(value) -> str:
  """A coarse type name: bool, int, float, sequence, str or the type's name."""
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


def check_fields(config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
  """Every leaf of ``config`` exists in ``defaults`` with its type (ints pass for floats), and none is missing.

  Raises:
    ConfigError: naming the first bad field (and, for an unknown one, the closest valid path).
  """
  have, want = leaf_paths(config), leaf_paths(defaults)
  valid = sorted(want)
  for path, value in have.items():
    if path not in want:
      raise ConfigError(unknown_field_message(path, valid) + f' (task {_task_name(config)!r})')
    default = want[path]
    if default is None or value is None:
      continue
    expected, got = kind(default), kind(value)
    if expected != got and not (expected == 'float' and got == 'int'):
      raise ConfigError(f'--config.{path}={value!r} is invalid: expected a {expected} (like the default '
                        f'{default!r}), got a {got}.')
  missing = [p for p in valid if p not in have]
  if missing:
    raise ConfigError(f'the config lacks field(s) {", ".join(missing)} of the default config of task '
                      f'{_task_name(config)!r}.')


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> None:
  """Sets ``{dotted path: value}`` in ``config`` in place, each checked like a ``--config.PATH=VALUE`` flag.

  Raises:
    ConfigError: a path that is not a field of ``config`` (naming the closest one) or a value of another type.
  """
  have = leaf_paths(config)
  for path, value in overrides.items():
    if path not in have:
      raise ConfigError(unknown_field_message(path, sorted(have)))
    expected, got = kind(have[path]), kind(value)
    if have[path] is not None and expected != got and not (expected == 'float' and got == 'int'):
      raise ConfigError(f'--config.{path}={value!r} is invalid: expected a {expected} (like the run\'s '
                        f'{have[path]!r}), got a {got}.')
    section, _, leaf = path.rpartition('.')
    target = config
    for name in section.split('.') if section else ():
      target = target[name]
    with target.ignore_type():
      target[leaf] = float(value) if expected == 'float' else value


def _task_name(config) -> str | None:
  task = config.get('task')
  return task.get('name') if isinstance(task, ml_collections.ConfigDict) else task


def task_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
  """The default config of ``config``'s task (its frontier config if ``config`` has a ``frontier``
  section); None for a task without a config file (e.g. one registered by a test)."""
  name = _task_name(config)
  if not isinstance(name, str):
    raise ConfigError(f'the config has no task.name (got task={config.get("task")!r}).')
  module = f'frontier_{name}' if 'frontier' in config else name
  if not os.path.exists(os.path.join(CONFIG_DIR, f'{module}.py')):
    return None
  return importlib.import_module(f'experiments.configs.{module}').get_config()


def fill_missing(config: ml_collections.ConfigDict) -> list[str]:
  """Adds, with their defaults (``PREDATING``'s value where it names one), the fields a stored config lacks (a run
  saved before they existed).

  Returns:
    The dotted paths that were added (empty for a current config or a task without a config file).
  """
  defaults = task_defaults(config)
  if defaults is None:
    return []
  missing = sorted(set(leaf_paths(defaults)) - set(leaf_paths(config)))
  for path in missing:
    *parents, leaf = path.split('.')
    node, default = config, defaults
    for name in parents:
      default = default[name]
      if name not in node:
        node[name] = ml_collections.ConfigDict()
      node = node[name]
    node[leaf] = PREDATING.get(path, default[leaf])
  return missing


def check_config(config: ml_collections.ConfigDict) -> None:
  """``check_fields`` against ``task_defaults(config)`` (nothing to check for a task without a file)."""
  defaults = task_defaults(config)
  if defaults is not None:
    check_fields(config, defaults)


# ---------------------------------------------------------------------------
# Launchers: the raw argv, before absl parses the flags.


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of a config file (``FILE.py`` or ``FILE.py:ARG`` as config_flags takes it)."""
  path, _, arg = path.partition(':')
  if not os.path.exists(path):
    raise ConfigError(f'--config={path} does not exist.')
  spec = importlib.util.spec_from_file_location('_precheck_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _flag_value(argv: list[str], name: str) -> str | None:
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      value = arg.split('=', 1)[1]
    elif arg == f'--{name}' and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def config_overrides(argv: list[str]) -> list[str]:
  """The dotted paths of the ``--config.PATH=VALUE`` (``--config.PATH VALUE``, ``--[no]config.PATH``) flags."""
  paths = []
  for arg in argv:
    for prefix in ('--config.', '--noconfig.'):
      if arg.startswith(prefix):
        paths.append(arg[len(prefix):].split('=', 1)[0])
  return paths


def precheck_argv(argv: list[str], valid_tasks: list[str], default_config_path, default_task: str = 'sinusoid',
                  ) -> str:
  """Checks a launcher's ``--task``, ``--config`` and ``--config.*`` flags; returns the task.

  Args:
    argv: the raw command line.
    valid_tasks: the tasks the launcher runs.
    default_config_path: ``task -> path`` of the config file used without ``--config``.
    default_task: the task without ``--task`` or ``--config``.

  Raises:
    ConfigError: an unknown task, a ``--task`` that disagrees with the ``--config`` file's ``task.name``,
      or an override of a field the config does not have.
  """
  task, config_path = _flag_value(argv, 'task'), _flag_value(argv, 'config')
  if task is not None and task not in valid_tasks:
    raise ConfigError(f'--task={task!r} is unknown; valid tasks: {", ".join(valid_tasks)}.')
  if config_path is None:
    task = task or default_task
    if task not in valid_tasks:
      raise ConfigError(f'--task={task!r} is unknown; valid tasks: {", ".join(valid_tasks)}.')
    config_path = default_config_path(task)
  config = load_config_file(config_path)
  name = _task_name(config)
  if name not in valid_tasks:
    raise ConfigError(f'--config={config_path} has task.name={name!r}; valid tasks: {", ".join(valid_tasks)}.')
  if task is not None and name != task:
    raise ConfigError(f'--task={task} disagrees with --config={config_path}, whose task.name is {name!r}; '
                      'drop --task or pass a config of that task.')
  valid = sorted(leaf_paths(config))
  for path in config_overrides(argv):
    if path not in valid:
      raise ConfigError(unknown_field_message(path, valid))
  return name
