"""The omniglot task: real episodes, learners end to end, and errors that name the field before compiling."""

import json
import math
import os
import re

import jax
import numpy as np
import pytest

from experiments import problems
from experiments import train
from experiments.configs import omniglot_tiny
from tests import shared_data
from tests.experiments.test_maml_prune import _launch

pytestmark = pytest.mark.skipif(not os.path.isdir(shared_data.OMNIGLOT_DIR), reason='shared Omniglot data missing')


def _config(overrides=None):
  """The tiny config with ``{'section.field' (or 'algorithm'): value}`` overrides."""
  config = omniglot_tiny.get_config()
  config.task.data_dir = shared_data.OMNIGLOT_DIR
  for path, value in (overrides or {}).items():
    if '.' in path:
      section, field = path.split('.')
      config[section][field] = value
    else:
      config[path] = value
  return config


def test_tiny_protonet_run_reports_accuracy_sparsity_and_flops(tmp_path):
  config = _config({'algorithm': 'protonet', 'task.ways': 4, 'eval.ways': (3, 4)})
  summary = train.run(config, str(tmp_path))
  accuracy = summary['eval']['sparse/accuracy']['ways_3_shots_1']['step_0']
  assert accuracy['num_tasks'] == config.eval.num_tasks and 0.0 <= accuracy['mean'] <= 1.0
  assert set(summary['eval']) == {'sparse', 'sparse/accuracy', 'gates_off', 'gates_off/accuracy'}
  structure = summary['structure']
  assert structure['effective_flops'] < structure['dense_flops']
  # Hardened to the target: exactly ceil(target * N) of the N gated weights (the conv kernels; the head is dense).
  pruned = math.ceil(config.sparsity.target_sparsity * structure['conv_weights'] - 1e-9)
  assert structure['nonzero_conv_weights'] == structure['conv_weights'] - pruned
  assert 0 <= structure['pruned_channels'] <= structure['conv_channels'] == 2 * config.model.conv_width


def test_tiny_meta_pruner_run_reports_the_structure_of_the_task_masks(tmp_path):
  config = _config()
  config.algorithm, config.gates.mask = 'protonet', 'meta_pruner'
  config.gates.meta_pruner_hidden_sizes, config.gates.meta_pruner_embed_dim = (8,), 4
  config.sparsity.harden_at_fraction = 0.5
  summary = train.run(config, str(tmp_path))
  structure, analysis = summary['structure'], summary['meta_pruner']
  assert structure['num_tasks'] == 4  # Every held-out task analysed (eval_num_tasks = 4).
  assert abs(structure['conv_weight_sparsity'] - analysis['realised_sparsity']['mean']) < 1e-6
  # Every task's mask is hardened to exactly ceil(target * N) of the N gated conv weights.
  pruned = math.ceil(config.sparsity.target_sparsity * structure['conv_weights'] - 1e-9)
  assert structure['conv_weight_sparsity'] == pytest.approx(pruned / structure['conv_weights'], abs=1e-12)
  per_task = analysis['realised_sparsity']
  assert per_task['min'] == per_task['max'] == pruned / structure['conv_weights']
  assert structure['effective_flops'] < structure['dense_flops']


@pytest.mark.parametrize('overrides, expected', [
    ({'algorithm': 'protonet', 'gates.mask': 'none', 'outer.meta_batch_size': 4}, 'conv'),
    ({'algorithm': 'protonet', 'gates.mask': 'hard_concrete', 'outer.meta_batch_size': 1}, 'conv'),
    ({'algorithm': 'protonet', 'gates.mask': 'hard_concrete', 'outer.meta_batch_size': 4,
      'execution.gate_sample_scope': 'batch'}, 'conv'),
    ({'algorithm': 'protonet', 'gates.mask': 'hard_concrete', 'outer.meta_batch_size': 4},
     'patches'),  # Per-task gate samples.
    ({'algorithm': 'protonet', 'gates.mask': 'meta_pruner', 'outer.meta_batch_size': 1},
     'patches'),  # Per-task eval masks.
    ({'algorithm': 'maml', 'gates.mask': 'none', 'outer.meta_batch_size': 1}, 'patches'),  # Adapted weights.
    ({'algorithm': 'protonet', 'gates.mask': 'none', 'execution.conv_method': 'patches'},
     'patches'),  # Explicit choice kept.
])
def test_auto_conv_method_is_conv_only_where_tasks_share_weights(overrides, expected):
  assert problems.conv_method(_config(overrides)) == expected


def test_episodes_come_from_held_out_characters():
  config = _config()
  splits = problems.load_omniglot_splits(config)
  problem = problems.get_problem(config)
  tasks = problem.eval_sampler(jax.random.key(0), 3, 1)
  assert tasks.support_inputs.shape == (3, 3, 16, 16, 1) and tasks.query_inputs.shape == (3, 9, 16, 16, 1)
  test = splits.test.images.astype(np.float32) / 255.0
  flat_test = test.reshape(-1, 16 * 16)
  for image in np.asarray(tasks.support_inputs).reshape(-1, 16 * 16):
    assert np.min(np.abs(flat_test - image).sum(-1)) < 1e-5
  names = lambda d: set(zip(d.alphabets, d.characters))  # pylint: disable=unnecessary-lambda-assignment
  assert not names(splits.train) & names(splits.test)


def test_train_shift_moves_meta_training_images_only():
  plain, shifted = problems.get_problem(_config()), problems.get_problem(_config({'task.train_shift': 2}))
  key = jax.random.key(4)
  base = plain.train_sampler(key, 3)
  split_key, _ = jax.random.split(key)
  unshifted = plain.train_sampler(split_key, 3)  # The episodes train_shift draws its classes from.
  moved = shifted.train_sampler(key, 3)
  np.testing.assert_array_equal(moved.support_targets, unshifted.support_targets)
  assert not np.array_equal(np.asarray(moved.support_inputs), np.asarray(unshifted.support_inputs))
  # Shifting only moves strokes (zero fill): no image gains ink, some lose what leaves the 16x16 frame.
  ink = lambda x: np.asarray(x).sum(axis=(-3, -2, -1))  # pylint: disable=unnecessary-lambda-assignment
  assert np.all(ink(moved.query_inputs) <= ink(unshifted.query_inputs) + 1e-3)
  for a, b in zip(plain.eval_sampler(key, 2, 1), shifted.eval_sampler(key, 2, 1)):  # Evaluation unchanged.
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(np.asarray(base.support_inputs), np.asarray(moved.support_inputs))


@pytest.mark.parametrize('overrides, field', [
    ({'task.train_shift': 8}, '--config.task.train_shift=8'),
    ({'task.train_shift': -1}, '--config.task.train_shift=-1'),
    ({'task.ways': 999}, '--config.task.ways=999'),
    ({'task.shots': 10, 'task.queries': 11}, '--config.task.shots=10'),
    ({'eval.ways': (5,)}, '--config.eval.ways'),               # MAML's head is 3-way.
    ({'task.split_by': 'drawer'}, '--config.task.split_by'),
    ({'task.data_source': 'hub'}, '--config.task.data_source'),
    ({'task.rotations': (45,)}, '--config.task.rotations=(45,)'),
    ({'task.rotations': (90, 90)}, '--config.task.rotations=(90, 90)'),
])
def test_bad_episode_sizes_name_the_field(overrides, field):
  with pytest.raises(ValueError, match=re.escape(field)):
    problems.get_problem(_config(overrides))


def test_missing_data_folder_says_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    problems.get_problem(_config({'task.data_dir': str(tmp_path / 'nowhere')}))
  message = str(error.value)
  assert '--config.task.data_dir=' in message and 'images_background_small1.zip' in message and 'tfds' in message


def test_launcher_omniglot_five_way_one_shot(tmp_path):
  result = _launch('--task=omniglot', '--config.task.ways=5', '--config.task.shots=1', f'--workdir={tmp_path}',
                   f'--config.task.data_dir={shared_data.OMNIGLOT_DIR}', f'--config.task.cache_dir={tmp_path}/cache',
                   '--config.model.conv_width=4', '--config.outer.num_outer_steps=2',
                   '--config.outer.meta_batch_size=2', '--config.eval.num_tasks=2', '--config.eval.ways=(5,)',
                   '--config.eval.shots=(1,)', '--config.eval.steps=(1,)')
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert summary['eval']['sparse/accuracy']['ways_5_shots_1']['step_1']['num_tasks'] == 2
