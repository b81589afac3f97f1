"""The ``sequence`` and ``strokes`` problems: meta-steps run without recompiling, episodes, launcher."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import build
from experiments import problems
from experiments import train
from experiments.configs import sequence as sequence_config
from experiments.configs import strokes as strokes_config
from metaprune_jax.data import strokes as strokes_data
from tests import test_utils
from tests.shared_data import OMNIGLOT_DIR

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_strokes = pytest.mark.skipif(
    not os.path.isfile(os.path.join(OMNIGLOT_DIR, strokes_data.ARCHIVES[0])),
    reason='shared Omniglot strokes archives not present')


def _apply(config, overrides: dict):
  """Sets ``{'section.field' (or a top-level field): value}`` on ``config``; returns it."""
  for path, value in overrides.items():
    if '.' in path:
      section, field = path.split('.')
      config[section][field] = value
    else:
      config[path] = value
  return config


_TINY_RUN = {'outer.meta_batch_size': 2, 'sparsity.sparsity_warmup_steps': 2, 'eval.num_tasks': 4,
             'eval.dense_reference': False}


def _tiny_sequence(overrides=None):
  config = _apply(sequence_config.get_config(), {
      **_TINY_RUN, 'model.hidden_size': 6, 'task.context_length': 6, 'task.horizon': 3, 'task.num_shots': 3,
      'task.num_query': 2, 'outer.num_outer_steps': 6, 'eval.steps': (0, 2), 'eval.num_query': 3,
      'run.log_every_steps': 3, 'run.checkpoint_every_steps': 3})
  return _apply(config, overrides or {})


def _tiny_strokes(tmp_path, overrides=None):
  config = _apply(strokes_config.get_config(), {
      **_TINY_RUN, 'model.hidden_size': 6, 'task.num_points': 8, 'task.ways': 3, 'task.num_shots': 1,
      'task.num_query': 2, 'outer.num_outer_steps': 4, 'eval.steps': (0, 1), 'eval.num_query': 2,
      'run.log_every_steps': 2, 'run.checkpoint_every_steps': 2, 'task.cache_dir': str(tmp_path / 'cache'),
      'task.data_dir': OMNIGLOT_DIR})
  return _apply(config, overrides or {})


def _run_two_steps(config, monkeypatch):
  """Two meta-steps of ``build(config)``'s jitted step through a trace counter; returns (problem, metrics, state)."""
  counter = test_utils.CompileCounter()
  real_get_problem = problems.get_problem

  def counted_problem(config):  # build's problem, with a task sampler that runs once per trace.
    problem = real_get_problem(config)
    return problem._replace(train_sampler=counter.wrap(problem.train_sampler))
  monkeypatch.setattr(problems, 'get_problem', counted_problem)
  exp = build.build(config)
  problem, state, step = exp.problem, exp.init_state(), exp.make_step(1)
  state, _ = step(state)
  traces = counter.count
  state, metrics = step(state)
  assert counter.count == traces, 'the second meta-step retraced'
  test_utils.assert_all_finite((state.meta_params, metrics))
  return problem, metrics, state


@pytest.mark.parametrize('cell,granularity,mask', [
    ('lstm', 'weight', 'hard_concrete'), ('gru', 'weight+hidden_unit', 'hard_concrete'),
    ('lstm', 'hidden_unit', 'none')])
def test_sequence_meta_step_runs_without_recompiling(cell, granularity, mask, monkeypatch):
  config = _tiny_sequence({'model.cell': cell, 'gates.granularity': granularity, 'gates.mask': mask})
  problem, metrics, state = _run_two_steps(config, monkeypatch)
  params = state.meta_params['params']
  assert ('unit_scale' in params) == (granularity != 'weight')
  assert problem.metric == 'mse' and problem.head_keys == ('readout',)
  tasks = problem.eval_sampler(jax.random.key(0), 2, 4)
  assert tasks.support_inputs.shape == (2, 4, 6, 1) and tasks.query_targets.shape == (2, 3, 3, 1)
  assert float(metrics['outer/query_loss']) > 0


@needs_strokes
def test_strokes_meta_step_runs_without_recompiling(tmp_path, monkeypatch):
  config = _tiny_strokes(tmp_path)
  problem, _, state = _run_two_steps(config, monkeypatch)
  assert problem.metric == 'accuracy' and problem.head_keys == ('readout',)
  tasks = problem.train_sampler(jax.random.key(1), 2)
  assert tasks.support_inputs.shape == (2, 3, 8, 3) and tasks.query_targets.shape == (2, 6)
  params = state.meta_params['params']
  task = jax.tree.map(lambda x: x[0], tasks)
  accuracy = problem.accuracy_fn(params, task.query_inputs, task.query_targets)
  assert 0.0 <= float(accuracy) <= 1.0
  assert problem.embed_fn(params, task.query_inputs).shape == (6, 6)


@needs_strokes
def test_strokes_episodes_are_character_disjoint(tmp_path):
  data = strokes_data.load_strokes(OMNIGLOT_DIR, num_points=8, cache_dir=str(tmp_path / 'cache'))
  splits = strokes_data.split_characters(data, seed=0)
  names = {split: set(part.names) for split, part in splits.items()}
  assert not names['train'] & names['test'] and not names['train'] & names['val']
  assert not names['val'] & names['test']
  # The sampled episodes draw only from their split: every episode drawing is one of that split's.
  config = _tiny_strokes(tmp_path, {'task.ways': 5, 'task.num_query': 3})
  problem = problems.get_problem(config)
  train_set, val_set, test_set = ({d.tobytes() for d in splits[name].drawings.reshape(-1, 8, 3)}
                                  for name in ('train', 'val', 'test'))
  train_tasks = problem.train_sampler(jax.random.key(0), 3)
  eval_tasks = problem.eval_sampler(jax.random.key(0), 3, 1)  # eval.split='validation', the default.
  test_tasks = problems.get_problem(_tiny_strokes(tmp_path, {'task.ways': 5, 'task.num_query': 3,
                                                             'eval.split': 'test'})).eval_sampler(
                                                                 jax.random.key(0), 3, 1)
  for tasks, own, other in ((train_tasks, train_set, val_set | test_set), (eval_tasks, val_set, train_set | test_set),
                            (test_tasks, test_set, train_set | val_set)):
    drawings = np.concatenate([np.asarray(tasks.support_inputs).reshape(-1, 8, 3),
                               np.asarray(tasks.query_inputs).reshape(-1, 8, 3)])
    assert all(d.tobytes() in own and d.tobytes() not in other for d in drawings)


@needs_strokes
def test_train_rotations_add_training_classes_only(tmp_path):
  data = strokes_data.load_strokes(OMNIGLOT_DIR, num_points=8, cache_dir=str(tmp_path / 'cache'))
  splits = strokes_data.split_characters(data, seed=0)
  rotated = strokes_data.rotate_drawings(splits['train'], (90, 180, 270))
  config = _tiny_strokes(tmp_path, {'task.ways': 5, 'task.num_query': 3, 'task.train_rotations': (90, 180, 270)})
  problem = problems.get_problem(config)
  rotated_set = {d.tobytes() for d in rotated.drawings[len(splits['train'].names):].reshape(-1, 8, 3)}
  train_tasks = problem.train_sampler(jax.random.key(0), 16)
  drawings = np.asarray(train_tasks.support_inputs).reshape(-1, 8, 3)
  assert sum(d.tobytes() in rotated_set for d in drawings) > len(drawings) // 2  # ~3/4 are rotated copies.
  val_set = {d.tobytes() for d in splits['val'].drawings.reshape(-1, 8, 3)}  # Unrotated validation drawings.
  eval_tasks = problem.eval_sampler(jax.random.key(0), 4, 1)
  assert all(d.tobytes() in val_set for d in np.asarray(eval_tasks.support_inputs).reshape(-1, 8, 3))
  with pytest.raises(ValueError, match=r'--config\.task\.train_rotations'):
    problems.get_problem(_tiny_strokes(tmp_path, {'task.train_rotations': (45,)}))


def test_bad_rnn_fields_name_the_flag():
  with pytest.raises(ValueError, match=r'--config\.model\.cell'):
    problems.get_problem(_tiny_sequence({'model.cell': 'rnn'}))
  with pytest.raises(ValueError, match=r'--config\.task\.kind'):
    problems.get_problem(_tiny_sequence({'task.kind': 'chaos'}))


def test_launcher_runs_a_tiny_sequence_config(tmp_path):
  overrides = [f'--config.{k}={v}' for k, v in {
      'model.hidden_size': 6, 'task.context_length': 6, 'task.horizon': 3, 'task.num_shots': 3,
      'task.num_query': 2, 'outer.meta_batch_size': 2, 'outer.num_outer_steps': 6,
      'sparsity.sparsity_warmup_steps': 2, 'eval.num_tasks': 4, 'eval.steps': '0,2', 'eval.shots': '3,',
      'eval.num_query': 3, 'run.log_every_steps': 3, 'run.checkpoint_every_steps': 3,
      'eval.dense_reference': False, 'gates.granularity': 'weight+hidden_unit'}.items()]
  result = subprocess.run([sys.executable, '-m', 'experiments.maml_prune', '--task=sequence',
                           f'--workdir={tmp_path}', *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, 'PYTHONPATH': ROOT})
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert summary['task'] == 'sequence' and summary['metric'] == 'mse'
  assert 0.0 <= summary['sparsity']['hidden_unit_sparsity'] <= 1.0
  assert summary['eval']['sparse']['shots_3']['step_2']['num_tasks'] == 4


@pytest.mark.parametrize('task', ['sequence', 'strokes'])
def test_meta_pruner_runs_on_rnn_tasks(tmp_path, task):
  if task == 'strokes' and not os.path.isdir(OMNIGLOT_DIR):
    pytest.skip('needs ../shared/data/omniglot')
  overrides = {'gates.mask': 'meta_pruner', 'gates.meta_pruner_hidden_sizes': (8,),
               'gates.meta_pruner_embed_dim': 4, 'sparsity.target_sparsity': 0.5,
               'sparsity.harden_at_fraction': 0.5}
  config = (_tiny_sequence(overrides) if task == 'sequence'
            else _tiny_strokes(tmp_path, {'algorithm': 'protonet', **overrides}))
  summary = train.run(config, str(tmp_path / 'run'))
  analysis = summary['meta_pruner']
  assert analysis['num_tasks'] == config.eval.num_tasks
  # Each task's mask is hardened to at least the target; 6 hidden-unit gates (strokes) cannot hit it exactly.
  assert 0.5 <= analysis['realised_sparsity']['min']
  assert analysis['realised_sparsity']['max'] < (0.55 if task == 'sequence' else 0.8)
  if task == 'strokes':  # Unit gates: every weight a removed unit takes with it is counted, per layer.
    assert any('recurrent_kernel' in name for name in analysis['per_layer_sparsity'])
  metric = 'sparse' if task == 'sequence' else 'sparse/accuracy'
  assert all(np.isfinite(row['mean']) for rows in summary['eval'][metric].values() for row in rows.values())
