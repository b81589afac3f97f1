"""``eval.protocol``: mixed or within-alphabet Omniglot evaluation episodes, end to end and in its errors."""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest

from experiments import build
from experiments import heldout
from experiments import problems
from experiments.configs import omniglot_tiny
from experiments.configs import smoke
from tests import shared_data
from tests.experiments.test_maml_prune import CONFIGS
from tests.experiments.test_maml_prune import _launch

needs_omniglot = pytest.mark.skipif(not os.path.isdir(shared_data.OMNIGLOT_DIR),
                                    reason='shared Omniglot data missing')

# The tiny config (2 characters per alphabet, 4 rotations: 8 classes per alphabet) split by alphabet; with
# split_seed=0 the test alphabets are Early_Aramaic and Tagalog (16 classes in all).
ALPHABET_SPLIT = {'task.split_by': 'alphabet', 'task.split_sizes': (5, 1, 2)}


def _config(overrides=None):
  """The tiny Omniglot config with ``{'section.field' (or 'algorithm'): value}`` overrides."""
  config = omniglot_tiny.get_config()
  config.task.data_dir = shared_data.OMNIGLOT_DIR
  for path, value in (overrides or {}).items():
    if '.' in path:
      section, field = path.split('.')
      config[section][field] = value
    else:
      config[path] = value
  return config


def _episode_alphabets(tasks, dataset) -> list[set]:
  """The alphabets of the support images of each task (found by exact match among ``dataset``'s images)."""
  pool = dataset.images.astype(np.float32).reshape(len(dataset.images), dataset.images.shape[1], -1) / 255.0
  alphabets = []
  for task in np.asarray(tasks.support_inputs):
    found = set()
    for image in task.reshape(len(task), -1):
      classes = np.flatnonzero(np.any(np.abs(pool - image).sum(-1) < 1e-5, axis=1))
      assert len(classes) > 0, 'a support image is not in the held-out split'
      found |= set(dataset.alphabets[classes].tolist())
    alphabets.append(found)
  return alphabets


@needs_omniglot
def test_within_alphabet_episodes_draw_every_class_from_one_test_alphabet():
  config = _config({**ALPHABET_SPLIT, 'eval.protocol': 'within_alphabet'})
  test_split = problems.load_omniglot_splits(config).test
  assert set(test_split.alphabets) == {'Early_Aramaic', 'Tagalog'}
  within = _episode_alphabets(problems.get_problem(config).eval_sampler(jax.random.key(0), 16, 1), test_split)
  assert all(len(found) == 1 for found in within)
  assert set().union(*within) == {'Early_Aramaic', 'Tagalog'}  # Both alphabets (P(missing one) = 2^-15).
  config.eval.protocol = 'mixed'
  mixed = _episode_alphabets(problems.get_problem(config).eval_sampler(jax.random.key(0), 16, 1), test_split)
  assert any(len(found) > 1 for found in mixed)  # P(no mixed episode in 16) = 0.2^16.


@needs_omniglot
def test_too_many_within_alphabet_ways_name_the_field_and_the_largest_alphabet():
  config = _config({**ALPHABET_SPLIT, 'algorithm': 'protonet', 'eval.ways': (3, 9)})
  problems.get_problem(config)  # 9 of the 16 test classes: a mixed episode fits ...
  config.eval.protocol = 'within_alphabet'
  with pytest.raises(ValueError, match=re.escape(  # ... but no alphabet has 9 classes.
      '--config.eval.ways=(3, 9) is invalid: within-alphabet episodes draw every class from one test alphabet and '
      'the largest, Early_Aramaic, has 8 classes')):
    problems.get_problem(config)


@pytest.mark.parametrize('config, match', [
    (smoke.get_config(), "--config.eval.protocol='lake' is invalid: use one of ('mixed', 'within_alphabet')"),
    (omniglot_tiny.get_config(), "--config.eval.protocol='lake' is invalid: use one of"),
])
def test_unknown_protocol_names_the_field(config, match):
  config.eval.protocol = 'lake'
  with pytest.raises(ValueError, match=re.escape(match)):
    build.check(config)


def test_within_alphabet_on_a_task_without_alphabets_is_refused():
  config = smoke.get_config()
  config.eval.protocol = 'within_alphabet'
  with pytest.raises(ValueError, match=re.escape("--config.eval.protocol='within_alphabet' is invalid: only "
                                                 '--task=omniglot has alphabets')):
    build.check(config)


@needs_omniglot
def test_launcher_records_the_within_alphabet_protocol_in_the_summary(tmp_path):
  result = _launch(f'--config={CONFIGS}/omniglot_tiny.py', f'--workdir={tmp_path}',
                   f'--config.task.data_dir={shared_data.OMNIGLOT_DIR}', '--config.task.split_by=alphabet',
                   '--config.task.split_sizes=(5, 1, 2)', '--config.eval.protocol=within_alphabet')
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert (summary['eval_protocol'], summary['split_by'], summary['eval_split']) == ('within_alphabet', 'alphabet',
                                                                                     'test')
  assert summary['eval']['sparse/accuracy']['ways_3_shots_1']['step_0']['num_tasks'] == 4
  assert 'test split, disjoint by alphabet; protocol within_alphabet' in (tmp_path / 'report.md').read_text()


def test_a_trained_run_without_the_field_is_evaluated_under_either_protocol(tiny_protonet_run, tmp_path):
  run = str(tmp_path / 'run')
  shutil.copytree(tiny_protonet_run, run)
  with open(os.path.join(run, 'summary.json')) as f:
    summary = json.load(f)
  assert (summary['eval_protocol'], summary['split_by']) == ('mixed', 'character')
  config_path = os.path.join(run, 'config.json')
  with open(config_path) as f:
    stored = json.load(f)
  del stored['eval']['protocol']  # A run saved before eval.protocol existed ...
  with open(config_path, 'w') as f:
    json.dump(stored, f)
  mixed = heldout.evaluate_run(run, split='test')  # ... evaluates as it did (the default: mixed) ...
  assert mixed['evaluation']['eval.protocol'] == 'mixed' and mixed['eval'] == summary['eval']
  within = heldout.evaluate_run(run, split='test', overrides={'eval.protocol': 'within_alphabet'})  # ... or not.
  assert within['evaluation']['eval.protocol'] == 'within_alphabet' and within['eval'] != summary['eval']
