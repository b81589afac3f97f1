"""``metaprune_jax.load_run``: predicts as the training code's masked model, from files alone."""

import json
import os
import shutil
import subprocess
import sys

import jax
import pytest

import metaprune_jax as mp
from experiments import build
from experiments import export
from experiments import train
from experiments.configs import smoke
from metaprune_jax import run as run_lib
from tests import test_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def sparse_run(tmp_path_factory):
  """A 20-step 90%-sparse smoke run (hardened at its last step); read-only by convention."""
  config = smoke.get_config()
  config.outer.num_outer_steps = 20
  config.eval.num_tasks, config.eval.steps = 4, (1, 2)
  workdir = str(tmp_path_factory.mktemp('sparse') / 'run')
  train.run(config, workdir, progress=train.quiet)
  return workdir


def _tasks(num_tasks=6):
  return mp.sample_sinusoid_tasks(jax.random.key(7), num_tasks=num_tasks, num_support=5, num_query=12)


def test_load_run_predicts_as_the_training_code_adapts(sparse_run):
  run = mp.load_run(sparse_run)
  exp, state = build.load(sparse_run)
  test_utils.assert_trees_all_equal(run.meta_params['params'], state.meta_params['params'])
  assert run.step == 20 and run.unavailable is None and run.spec['num_inner_steps'] == 2
  pruned = sum(int((m == 0).sum()) for m in jax.tree.leaves(run.masks))
  assert pruned == round(0.9 * sum(m.size for m in jax.tree.leaves(run.masks)))
  tasks = _tasks()
  before, after = export.masked_predictor(exp, state.meta_params, run.spec)(tasks)
  predicted = jax.vmap(run.predict)(tasks.support_inputs, tasks.support_targets, tasks.query_inputs)
  test_utils.assert_close(predicted, after, atol=1e-5)
  test_utils.assert_close(jax.vmap(run.apply, in_axes=(None, 0))(run.masked_params, tasks.query_inputs), before,
                          atol=1e-6)
  mse = ((after - tasks.query_targets) ** 2).mean(axis=(1, 2))
  test_utils.assert_close(run.evaluate(tasks), mse, rtol=1e-5)


def test_load_run_without_a_model_spec_says_what_to_use(sparse_run, tmp_path):
  old = str(tmp_path / 'old')
  shutil.copytree(sparse_run, old)
  os.remove(os.path.join(old, run_lib.MODEL_SPEC_FILE))  # A run trained before the file existed.
  run = mp.load_run(old)
  assert run.spec is None and run.masks is not None
  with pytest.raises(ValueError, match=r'no model_spec.json .* experiments\.build\.load'):
    run.predict(*_tasks(1)[:3])


def test_load_run_reads_files_only_never_experiments(sparse_run):
  # The library is the floor below experiments: loading and predicting imports nothing from it.
  code = ('import sys, jax, metaprune_jax as mp\n'
          'run = mp.load_run(sys.argv[1])\n'
          't = mp.sample_sinusoid_tasks(jax.random.key(0), num_tasks=1, num_support=5, num_query=3)\n'
          'run.predict(t.support_inputs[0], t.support_targets[0], t.query_inputs[0]).block_until_ready()\n'
          'print(sorted(m for m in sys.modules if m.split(".")[0] == "experiments"))\n')
  result = subprocess.run([sys.executable, '-c', code, sparse_run], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().splitlines()[-1] == '[]'


def test_a_run_that_masks_each_task_differently_writes_no_spec(tmp_path):
  config = smoke.get_config()
  config.gates.mask = 'meta_pruner'  # One mask per task: no one model for the library to run.
  train._write_model_spec(config, str(tmp_path))  # pylint: disable=protected-access
  with open(tmp_path / run_lib.MODEL_SPEC_FILE) as f:
    document = json.load(f)
  assert document['spec'] is None
  assert "gates.mask='meta_pruner'" in document['unavailable'] and 'experiments.build.load' in document['unavailable']
