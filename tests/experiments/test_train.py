"""End to end: a tiny run writes every output; resume equals uninterrupted; bad configs name the flag."""

import json
import math
import os

import ml_collections
import pytest

from metaprune_jax import checkpoint
from experiments import build
from experiments import config_check
from experiments import problems
from experiments import train
from experiments.configs import smoke
from tests import test_utils


def _read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_tiny_run_writes_outputs_and_honest_summary(tmp_path):
  config = smoke.get_config()
  summary = train.run(config, str(tmp_path))
  for name in ('config.json', 'metrics.jsonl', 'summary.json', 'training.png'):
    assert (tmp_path / name).exists(), name
  assert checkpoint.list_checkpoints(str(tmp_path))[-1][0] == config.outer.num_outer_steps
  stats = summary['eval']['sparse']['shots_5']['step_1']
  assert stats['num_tasks'] == config.eval.num_tasks
  assert {'mean', 'ci95', 'median', 'num_diverged'} <= set(stats)
  assert set(summary['eval']) == {'sparse', 'gates_off'}
  assert 0.0 <= summary['sparsity']['realised_sparsity'] < 1.0
  assert summary['seed'] == config.seed
  steps = [r['step'] for r in _read_metrics(str(tmp_path))]
  assert steps == [10, 20, 30]


def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
  config = smoke.get_config()
  config.run.checkpoint_every_steps = 10
  full = train.run(config, str(tmp_path / 'full'))

  real_save = checkpoint.save

  def save_then_die(state, workdir, **kwargs):
    path = real_save(state, workdir, **kwargs)
    if int(state.step) == 20:
      raise KeyboardInterrupt('simulated kill after the step-20 checkpoint')
    return path
  monkeypatch.setattr(checkpoint, 'save', save_then_die)
  with pytest.raises(KeyboardInterrupt):
    train.run(config, str(tmp_path / 'resumed'))
  monkeypatch.setattr(checkpoint, 'save', real_save)
  resumed = train.run(config, str(tmp_path / 'resumed'))
  drop_rate = lambda records: [{k: v for k, v in r.items() if k != 'steps_per_sec'} for r in records]
  assert drop_rate(_read_metrics(str(tmp_path / 'full'))) == drop_rate(_read_metrics(str(tmp_path / 'resumed')))
  assert full['eval'] == resumed['eval']
  assert resumed['timings']['start_step'] == 20


def test_steps_per_call_gives_the_same_run(tmp_path):
  config = smoke.get_config()  # 30 steps, log every 10, checkpoint at the end.
  config.run.checkpoint_every_steps = 15  # Boundaries 10, 15, 20, 30: some calls must fall back to one step.
  config.run.steps_per_call = 1
  single = train.run(config, str(tmp_path / 'single'))
  config.run.steps_per_call = 4
  scanned = train.run(config, str(tmp_path / 'scanned'))
  drop_rate = lambda records: [{k: v for k, v in r.items() if k != 'steps_per_sec'} for r in records]
  one, four = drop_rate(_read_metrics(str(tmp_path / 'single'))), drop_rate(_read_metrics(str(tmp_path / 'scanned')))
  assert [r['step'] for r in four] == [10, 20, 30]
  for a, b in zip(one, four):
    test_utils.assert_trees_all_close(b, a, rtol=1e-4, atol=1e-6)
  assert [s for s, _ in checkpoint.list_checkpoints(str(tmp_path / 'scanned'))][-2:] == [15, 30]
  test_utils.assert_trees_all_close(scanned['eval'], single['eval'], rtol=1e-4, atol=1e-6)
  # The first call (compile) ran 4 steps: the rate covers the other 26.
  assert scanned['timings']['timed_steps'] == 26 and single['timings']['timed_steps'] == 29
  assert scanned['timings']['steps_per_sec'] > 0


@pytest.mark.parametrize('path,value,flag', [
    ('sparsity.target_sparsity', 1.0, '--config.sparsity.target_sparsity'),
    ('sparsity.target_sparsity', -0.2, '--config.sparsity.target_sparsity'),
    ('sparsity.dual_lr', -0.1, '--config.sparsity.dual_lr'),
    ('outer.num_outer_steps', 0, '--config.outer.num_outer_steps'),
    ('inner.num_inner_steps', 0, '--config.inner.num_inner_steps'),
    ('outer.meta_batch_size', -1, '--config.outer.meta_batch_size'),
    ('task.name', 'imagenet', '--task'),
    ('task.num_shots', 0, '--config.task.num_shots'),
    ('gates.granularity', 'atoms', '--config.gates.granularity'),
    ('outer.outer_lr_schedule', 'linear', '--config.outer.outer_lr_schedule'),
    ('outer.outer_lr_final_scale', 1.5, '--config.outer.outer_lr_final_scale'),
    ('model.activation', 'sigmoid', "--config.model.activation='sigmoid' is invalid: use one of"),
    ('model.kernel_init_std', -1.0, '--config.model.kernel_init_std'),
    ('task.input_range', (5.0, -5.0), '--config.task.input_range'),
    ('execution.gate_sample_scope', 'episode', '--config.execution.gate_sample_scope'),
    ('run.steps_per_call', 0, '--config.run.steps_per_call'),
    ('eval.num_tasks', 1, '--config.eval.num_tasks'),
])
def test_bad_config_names_the_flag(path, value, flag):
  config = smoke.get_config()
  section, field = path.split('.')
  config[section][field] = value
  with pytest.raises(ValueError, match=flag):
    build.check(config)


def test_hidden_unit_gates_on_an_mlp_name_the_granularity(tmp_path):
  config = smoke.get_config()
  config.gates.granularity = 'hidden_unit'
  with pytest.raises(ValueError, match="--config.gates.granularity='hidden_unit' gates the hidden units of recurrent"):
    train.run(config, str(tmp_path))


@pytest.mark.parametrize('path,value,match', [
    ('model.hidden_sizes', 8, '--config.model.hidden_sizes=8 is invalid: expected a sequence'),
    ('outer.outer_lr', '1e-3', "--config.outer.outer_lr='1e-3' is invalid: expected a float"),
    ('run.tensorboard', 1, '--config.run.tensorboard=1 is invalid: expected a bool'),
])
def test_wrong_type_in_a_python_built_config_names_the_field(path, value, match):
  as_dict = smoke.get_config().to_dict()
  section, field = path.split('.')
  as_dict[section][field] = value
  with pytest.raises(config_check.ConfigError, match=match):
    build.check(ml_collections.ConfigDict(as_dict))


@pytest.mark.parametrize('path,suggestion', [
    ('sparsity.target_sparsty', 'sparsity.target_sparsity'),
    ('target_sparsity', 'sparsity.target_sparsity'),
    ('eval.num_task', 'eval.num_tasks'),
])
def test_unknown_field_in_a_python_built_config_names_the_closest(path, suggestion):
  as_dict = smoke.get_config().to_dict()
  if '.' in path:
    section, field = path.split('.')
    as_dict[section][field] = 1
  else:
    as_dict[path] = 1
  with pytest.raises(config_check.ConfigError, match=f'--config.{path} is not a config field; did you mean '
                     f'--config.{suggestion}'):
    build.check(ml_collections.ConfigDict(as_dict))


def test_every_config_file_passes_its_own_check():
  for name in sorted(os.listdir(config_check.CONFIG_DIR)):
    if name.endswith('.py') and name not in ('__init__.py', 'base.py'):
      config = config_check.load_config_file(os.path.join(config_check.CONFIG_DIR, name))
      build.check(config)  # Names, types and values.
      assert config.eval.inner_lr == config.inner.inner_lr, name  # A reference, unless a file sets it.


def test_dense_mask_trains_without_gates(tmp_path):
  config = smoke.get_config()
  config.gates.mask = 'none'
  summary = train.run(config, str(tmp_path))
  assert set(summary['eval']) == {'dense'}
  assert summary['sparsity']['nonzero_params'] == summary['sparsity']['total_params']


def test_problem_registry_lists_valid_tasks():
  config = smoke.get_config()
  config.task.name = 'nope'
  with pytest.raises(ValueError, match='sinusoid'):
    problems.get_problem(config)


def test_meta_pruner_run_reports_task_masks(tmp_path):
  config = smoke.get_config()
  config.gates.mask = 'meta_pruner'
  config.sparsity.target_sparsity = 0.5
  config.sparsity.harden_at_fraction = 0.5
  config.gates.meta_pruner_hidden_sizes = (8,)
  config.gates.meta_pruner_embed_dim = 4
  summary = train.run(config, str(tmp_path))
  analysis = summary['meta_pruner']
  gated = summary['sparsity']['gated_weights']
  expected = math.ceil(0.5 * gated) / gated  # Every task's mask hardened to exactly ceil(0.5 N) of N.
  assert analysis['realised_sparsity']['min'] == analysis['realised_sparsity']['max'] == expected
  assert 0.0 <= analysis['mean_pairwise_jaccard'] <= 1.0
  assert analysis['mask_generation_seconds'] > 0 and analysis['inner_step_seconds'] > 0
  assert (tmp_path / 'task_masks.png').exists()
  report = summary['sparsity']
  assert report['nonzero_params'] == round(report['total_params'] - report['realised_sparsity'] * report['gated_weights'])
  assert 'sparse' in summary['eval'] and 'gates_off' in summary['eval']
