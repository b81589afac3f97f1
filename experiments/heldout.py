"""Re-evaluating a trained run on a held-out split: validation while choosing, the test split once.

A run evaluates ``config.eval.split`` when it finishes (``'validation'`` for the
dataset configs: recipe choices and sweeps read only those numbers). Once a
recipe is final, ``evaluate_run(workdir, split='test')`` evaluates the test
split with the run's own evaluation settings (the same episodes a run with
``eval.split='test'`` would have drawn) and records it in the run's test ledger,
``RUN/test_evaluations.jsonl``. A second test evaluation with the same settings
is refused unless asked for (``again=True``), and the ledger then says it was a
repeat, so a number read off the test split more than once can be told apart.

Settings that do not change the trained model may be overridden for the
evaluation (``overrides={'eval.num_tasks': 1000}``); anything outside ``eval.``
and the evaluation-only fields below is refused, since it would evaluate a model
other than the one trained.
"""

import json
import os
import time

from etils import epath

from experiments import build
from experiments import config_check
from experiments import provenance
from experiments import workdir as workdir_lib

LEDGER_FILE = 'test_evaluations.jsonl'
RESULTS_FOLDER = 'heldout'
SPLITS = ('validation', 'test')
# Top-level fields besides eval.* that change how a trained model is evaluated, not the model.
EVALUATION_FIELDS = ('bn_mode',)


class RepeatedTestError(ValueError):
  """The test split of this run was already evaluated with these settings."""


def _check_overrides(overrides: dict) -> None:
  for path in overrides:
    if path == 'eval.split':
      raise ValueError('pass the split as --split, not as an override')
    if not (path.startswith('eval.') or path in EVALUATION_FIELDS):
      raise ValueError(f'--override={path}=... would change the trained model, not its evaluation; only eval.* '
                       f'and {", ".join(EVALUATION_FIELDS)} can be overridden')


def _result_name(split: str, overrides: dict) -> str:
  tags = [f'{path}={value}'.replace('/', '_').replace(' ', '') for path, value in sorted(overrides.items())]
  return '__'.join([split] + tags) + '.json'


def read_ledger(workdir: str) -> list[dict]:
  """The run's test evaluations, oldest first (empty when the test split was never evaluated)."""
  path = epath.Path(workdir) / LEDGER_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluate_run(workdir: str, *, split: str, overrides: dict | None = None, data_dir: str | None = None,
                 again: bool = False) -> dict:
  """Evaluates the run in ``workdir`` on ``split`` and writes ``workdir/heldout/<split>[__overrides].json``.

  Args:
    workdir: a run folder of ``python -m experiments.maml_prune``.
    split: ``'validation'`` or ``'test'``.
    overrides: ``{dotted path: value}`` of evaluation settings (``eval.*``, ``bn_mode``).
    data_dir: replaces ``task.data_dir`` (the data is read to draw the episodes).
    again: evaluate the test split although the ledger holds an evaluation with the same settings.

  Returns:
    ``{'split', 'overrides', 'eval', 'seed', 'eval_num_tasks', 'test_evaluation', 'provenance', ...}``;
    ``eval`` has the layout of ``summary.json['eval']``; ``test_evaluation`` is this evaluation's
    position among the run's test evaluations with these settings (1 = the first), absent for validation.

  Raises:
    RepeatedTestError: ``split='test'``, the settings were evaluated before and ``again`` is False.
    ValueError: an unknown split or an override outside the evaluation settings.
  """
  if split not in SPLITS:
    raise ValueError(f'--split={split!r} is invalid: use one of {", ".join(SPLITS)}')
  overrides = dict(overrides or {})
  _check_overrides(overrides)
  previous = [e for e in read_ledger(workdir) if e['overrides'] == overrides] if split == 'test' else []
  if previous and not again:
    raise RepeatedTestError(
        f'the test split of {workdir} was already evaluated with these settings ({len(previous)}x, first at '
        f"{previous[0]['time']}: {previous[0]['result']}); test tasks are read once per final recipe. Pass --again "
        'to evaluate it again (the ledger records the repeat).')
  exp, state = build.load(workdir, data_dir=data_dir, overrides={**overrides, 'eval.split': split})
  config = exp.config
  start = time.perf_counter()
  results = exp.evaluate(state.meta_params)
  record = {
      'workdir': workdir_lib.absolute(workdir), 'split': split, 'overrides': overrides, 'seed': int(config.seed),
      'task': config.task.name, 'algorithm': config.algorithm, 'mask': config.gates.mask,
      'eval_num_tasks': int(config.eval.num_tasks),
      'evaluation': {path: value for path, value in config_check.leaf_paths(config).items()
                     if path.startswith('eval.') or path in EVALUATION_FIELDS},
      'eval_seconds': time.perf_counter() - start,
      'provenance': provenance.provenance(),
      'eval': results,
  }
  if split == 'test':
    record['test_evaluation'] = len(previous) + 1
  folder = os.path.join(workdir, RESULTS_FOLDER)
  epath.Path(folder).mkdir(parents=True, exist_ok=True)
  result_path = os.path.join(folder, _result_name(split, overrides))
  workdir_lib.write_atomic(result_path, json.dumps(record, indent=2, default=str))
  if split == 'test':
    entry = {'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'overrides': overrides,
             'result': os.path.relpath(result_path, workdir), 'repeat': len(previous),
             'commit': record['provenance'].get('commit')}
    workdir_lib.append_text(os.path.join(workdir, LEDGER_FILE), json.dumps(entry) + '\n')
  return record
