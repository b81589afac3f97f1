"""Distillation from a teacher run (``--config.distill.*``) through the one build path."""

import jax
import numpy as np
import pytest

from experiments import build
from experiments import train
from experiments.configs import smoke
from metaprune_jax.export import model as export_model


@pytest.fixture(scope='module')
def teacher_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('distill') / 'teacher')
  config = smoke.get_config()
  config.gates.mask = 'none'
  config.outer.num_outer_steps = 10
  train.run(config, workdir)
  return workdir


def _student(teacher, weight):
  config = smoke.get_config()
  config.distill.weight = weight
  config.distill.teacher = teacher
  return config


def test_student_tasks_carry_the_teachers_adapted_predictions(teacher_run):
  exp = build.build(_student(teacher_run, 1.0))
  plain = build.build(_student('', 0.0))
  key = jax.random.key(3)
  tasks, labels = exp.problem.train_sampler(key, 4), plain.problem.train_sampler(key, 4)
  np.testing.assert_array_equal(tasks.query_inputs, labels.query_inputs)
  teacher = build.teacher_for(exp.config)
  expected = jax.vmap(teacher)(labels.support_inputs, labels.support_targets, labels.query_inputs)
  np.testing.assert_allclose(tasks.query_targets, expected, atol=1e-6)
  assert not np.allclose(tasks.query_targets, labels.query_targets)
  half = build.build(_student(teacher_run, 0.5)).problem.train_sampler(key, 4)
  np.testing.assert_allclose(half.query_targets, 0.5 * (expected + labels.query_targets), atol=1e-6)


def test_a_distilled_run_trains_and_records_its_teacher(teacher_run, tmp_path):
  summary = train.run(_student(teacher_run, 0.5), str(tmp_path / 'student'))
  assert np.isfinite(summary['eval']['sparse']['shots_5']['step_1']['mean'])
  exp, _ = build.load(str(tmp_path / 'student'))
  assert exp.config.distill.teacher == teacher_run and exp.config.distill.weight == 0.5


def test_bad_distillation_settings_name_the_field(teacher_run, tmp_path):
  with pytest.raises(ValueError, match='distill.teacher'):
    build.check(_student(str(tmp_path), 0.5))
  with pytest.raises(ValueError, match='distill.weight'):
    build.check(_student(teacher_run, 1.5))
  config = _student(teacher_run, 0.5)
  config.algorithm = 'protonet'
  with pytest.raises(ValueError, match='distill.teacher'):
    build.teacher_for(config)


def test_teacher_predict_is_the_export_models(teacher_run):
  """The teacher adapts as it was trained (inner settings), through the export model's predict."""
  spec = build.export_spec.model_spec(build.checkpoint.load_run(teacher_run).config, inner='train')
  assert spec['num_inner_steps'] == smoke.get_config().inner.num_inner_steps and export_model.adapts(spec)
