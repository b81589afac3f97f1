"""``train.run`` from Python: a ``progress`` callback gets every logged record; without one the line is printed
where absl would not show it (a notebook, a script), and only logged under a launcher."""

import json

import pytest
from absl import logging

from experiments import build
from experiments import train
from experiments.configs import smoke

_HOST = {'outer/objective': 1.5, 'outer/query_loss': 1.25, 'mask/expected_sparsity': 0.5,
         'mask/realised_sparsity': 0.0, 'mask/multiplier': 0.1}


def test_progress_gets_every_logged_record(tmp_path, capsys):
  config = smoke.get_config()
  config.outer.num_outer_steps = 20
  config.eval.num_tasks, config.eval.steps = 4, (1,)
  calls = []
  train.run(config, str(tmp_path), progress=lambda step, record: calls.append((step, record)))
  with open(tmp_path / 'metrics.jsonl') as f:
    written = [json.loads(line) for line in f]
  assert [step for step, _ in calls] == [10, 20]
  assert [record for _, record in calls] == written
  assert 'step 10/20' not in capsys.readouterr().out  # The callback replaces the printed line.


@pytest.fixture
def absl_verbosity():
  saved = logging.get_verbosity()
  yield
  logging.set_verbosity(saved)


def test_without_a_callback_the_line_is_printed_only_where_absl_is_silent(capsys, absl_verbosity):
  del absl_verbosity
  exp = build.build(smoke.get_config())
  logging.set_verbosity(logging.WARNING)  # A notebook or a script: absl shows no INFO.
  train._log_line(exp, 10, 5.0, _HOST, None)  # pylint: disable=protected-access
  printed = capsys.readouterr().out
  assert printed.startswith('step 10/30 | 5 steps/s |') and 'query mse 1.2500' in printed
  logging.set_verbosity(logging.INFO)  # Under a launcher (app.run): the log line only, nothing printed.
  train._log_line(exp, 10, 5.0, _HOST, None)  # pylint: disable=protected-access
  train._log_line(exp, 10, 5.0, _HOST, train.quiet)  # pylint: disable=protected-access
  assert capsys.readouterr().out == ''
