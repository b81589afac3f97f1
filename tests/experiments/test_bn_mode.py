"""``--config.bn_mode``: an inductive run end to end, a transductive run re-evaluated inductively, bad values."""

import json
import os

import pytest

import metaprune_jax as mp
from experiments import build
from experiments import config_check
from experiments import export
from experiments import train
from experiments.configs import omniglot_tiny
from experiments.configs import smoke
from tests import shared_data
from tests.experiments.test_maml_prune import _launch

needs_omniglot = pytest.mark.skipif(not os.path.isdir(shared_data.OMNIGLOT_DIR), reason='shared Omniglot data missing')


@pytest.fixture(scope='module')
def inductive_run(tmp_path_factory):
  """A tiny gated Omniglot MAML run launched with ``--config.bn_mode=inductive``: its workdir."""
  workdir = tmp_path_factory.mktemp('bn_mode') / 'inductive'
  result = _launch('--config=experiments/configs/omniglot_tiny.py', '--config.bn_mode=inductive',
                   f'--config.task.data_dir={shared_data.OMNIGLOT_DIR}', f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@needs_omniglot
def test_launcher_records_the_bn_mode_in_the_summary_and_report(inductive_run):
  summary = json.loads((inductive_run / 'summary.json').read_text())
  assert summary['bn_mode'] == 'inductive'
  assert summary['eval']['sparse/accuracy']['ways_3_shots_1']['step_1']['num_tasks'] == 4
  assert '- batch norm: inductive' in (inductive_run / 'report.md').read_text()
  assert json.loads((inductive_run / 'config.json').read_text())['bn_mode'] == 'inductive'
  assert mp.load_run(str(inductive_run)).spec['bn_mode'] == 'inductive'  # Its few-shot predictor is inductive too.


@needs_omniglot
def test_inductive_export_predicts_as_the_masked_model(inductive_run, tmp_path):
  document = export.export_run(str(inductive_run), str(tmp_path / 'out'), num_check_tasks=2)
  assert document['spec']['bn_mode'] == 'inductive'
  assert document['max_abs_output_diff'] <= 1e-4
  held = document['held_out']
  assert held['exported']['mean'] == pytest.approx(held['masked']['mean'], abs=1e-6)


@needs_omniglot
def test_a_transductive_run_is_evaluated_again_inductively(tmp_path):
  config = omniglot_tiny.get_config()
  config.task.data_dir = shared_data.OMNIGLOT_DIR
  config.algorithm = 'protonet'
  assert config.bn_mode == 'transductive'  # The default: existing runs and numbers are unchanged.
  summary = train.run(config, str(tmp_path))
  assert summary['bn_mode'] == 'transductive'
  exp, state = build.load(str(tmp_path), overrides={'bn_mode': 'inductive'})
  assert exp.config.bn_mode == 'inductive'
  inductive = exp.evaluate(state.meta_params)
  name = 'ways_3_shots_1'
  assert inductive['sparse'][name]['step_0']['num_tasks'] == summary['eval']['sparse'][name]['step_0']['num_tasks']
  assert inductive['sparse'][name]['step_0']['mean'] != summary['eval']['sparse'][name]['step_0']['mean']
  # A run saved before the field existed loads as transductive and evaluates as it did.
  config_path = tmp_path / 'config.json'
  stored = json.loads(config_path.read_text())
  del stored['bn_mode']
  config_path.write_text(json.dumps(stored))
  exp, state = build.load(str(tmp_path))
  assert exp.config.bn_mode == 'transductive'
  assert exp.evaluate(state.meta_params)['sparse'][name] == summary['eval']['sparse'][name]


def test_a_bad_bn_mode_names_the_flag():
  config = omniglot_tiny.get_config()
  config.bn_mode = 'per_image'
  with pytest.raises(ValueError, match=r"--config\.bn_mode='per_image' is invalid: use 'transductive'"):
    build.check(config)
  sinusoid = smoke.get_config()  # No batch norm: no such field.
  sinusoid.bn_mode = 'inductive'
  with pytest.raises(config_check.ConfigError, match=r'--config\.bn_mode is not a config field'):
    build.check(sinusoid)
