"""``python -m experiments.export``: a trained run exported, checked against the masked model, bad input refused."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from experiments import evaluate
from experiments import export
from experiments import train
from experiments.configs import omniglot_tiny
from experiments.configs import smoke
from metaprune_jax.export import artifact
from metaprune_jax.export import model as model_lib
from tests import shared_data
from tests.experiments import test_evaluate
from tests.experiments.test_maml_prune import ROOT


def _digest(folder) -> dict[str, str]:
  """Every file under ``folder`` and its sha256 (to show nothing in a run folder changed)."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope='module')
def sparse_sinusoid_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('export') / 'run')
  config = smoke.get_config()
  config.model.hidden_sizes = (40, 40)  # The default sinusoid MLP (1,761 params).
  config.sparsity.target_sparsity = 0.9
  config.sparsity.harden_at_fraction = 0.5
  train.run(config, workdir)
  return workdir


def test_export_of_a_sparse_sinusoid_run(sparse_sinusoid_run, tmp_path):
  before = _digest(sparse_sinusoid_run)
  document = export.export_run(sparse_sinusoid_run, str(tmp_path / 'out'), num_check_tasks=5)
  assert _digest(sparse_sinusoid_run) == before
  assert document['max_abs_output_diff'] <= 1e-5
  assert document['artifact_bytes'] <= 0.25 * document['dense_bytes']
  assert document['source']['step'] == 30 and document['provenance']['backend'] == 'cpu'
  held = document['held_out']
  assert held['num_tasks'] == 20 and held['metric'] == 'mse'
  assert held['exported']['mean'] == pytest.approx(held['masked']['mean'], rel=1e-4)
  on_disk = json.loads((tmp_path / 'out' / artifact.METADATA_FILE).read_text())
  assert on_disk['held_out'] == held and on_disk['spec']['arch'] == 'mlp'
  int8 = export.export_run(sparse_sinusoid_run, str(tmp_path / 'int8'), quantization='int8', num_check_tasks=5)
  assert int8['artifact_bytes'] < document['artifact_bytes']
  assert int8['held_out']['exported']['mean'] == pytest.approx(held['exported']['mean'], rel=0.1)


@pytest.mark.skipif(not os.path.isdir(shared_data.OMNIGLOT_DIR), reason='shared Omniglot data missing')
def test_channel_gated_protonet_exports_a_smaller_conv(tmp_path):
  config = omniglot_tiny.get_config()
  config.task.data_dir = shared_data.OMNIGLOT_DIR
  config.algorithm = 'protonet'
  config.gates.mask = 'hard_concrete'
  config.gates.granularity = 'out_unit'
  config.sparsity.target_sparsity = 0.5
  config.sparsity.harden_at_fraction = 0.5
  train.run(config, str(tmp_path / 'run'))
  document = export.export_run(str(tmp_path / 'run'), str(tmp_path / 'out'))
  assert document['max_abs_output_diff'] <= 1e-4
  assert document['compact_params'] < document['total_params']
  after = document['layer_shapes']['after']
  assert 'head/kernel' not in after  # A prototypical network exports its embedding only.
  assert after['conv_1/kernel'][3] < 8 or after['conv_0/kernel'][3] < 8
  held = document['held_out']
  assert held['exported']['mean'] == pytest.approx(held['masked']['mean'], abs=1e-6)
  # experiments.evaluate takes the export folder as it takes a run: same episodes, same accuracies.
  rng = np.random.default_rng(0)
  test_evaluate._write_episode(tmp_path / 'episodes', 'a', ways=4, shots=2, queries=3, size=24, rng=rng)  # pylint: disable=protected-access
  from_export = evaluate.evaluate_episodes(str(tmp_path / 'out'), str(tmp_path / 'episodes'))
  from_run = evaluate.evaluate_episodes(str(tmp_path / 'run'), str(tmp_path / 'episodes'))
  assert from_export['gate_mode'] == 'exported' and from_export['episodes'][0]['query'] == 12
  assert from_export['episodes'][0]['accuracy'] == pytest.approx(from_run['episodes'][0]['accuracy'], abs=1e-6)
  assert from_export['episodes'][0]['loss'] == pytest.approx(from_run['episodes'][0]['loss'], abs=1e-4)


def test_launcher_bad_inputs_are_one_line_and_change_nothing(sparse_sinusoid_run, tmp_path):
  before = _digest(sparse_sinusoid_run)

  def launch(*args):
    return subprocess.run([sys.executable, '-m', 'experiments.export', *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)

  result = launch(f'--workdir={sparse_sinusoid_run}', f'--out={tmp_path}/x', '--quantize=int4')
  assert result.returncode == 2 and '--quantize' in result.stderr.strip().splitlines()[-1]
  result = launch(f'--workdir={sparse_sinusoid_run}', f'--out={sparse_sinusoid_run}/export')
  assert result.returncode == 2 and 'inside the run folder' in result.stderr
  assert 'Traceback' not in result.stderr
  assert _digest(sparse_sinusoid_run) == before
  damaged = tmp_path / 'damaged'
  shutil.copytree(sparse_sinusoid_run, damaged)
  for root, _, files in os.walk(damaged / 'checkpoints'):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 100:
        with open(path, 'r+b') as f:
          f.truncate(10)
  result = launch(f'--workdir={damaged}', f'--out={tmp_path}/y')
  assert result.returncode == 2 and 'error:' in result.stderr and 'Traceback' not in result.stderr
  assert not (tmp_path / 'y' / artifact.ARRAYS_FILE).exists()


def test_a_dense_run_is_refused(tmp_path):
  config = smoke.get_config()
  config.gates.mask = 'none'
  config.outer.num_outer_steps = 2
  train.run(config, str(tmp_path / 'dense'))
  with pytest.raises(ValueError, match='dense run'):
    export.export_run(str(tmp_path / 'dense'), str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()


def test_loading_a_run_folder_as_an_export_says_so(sparse_sinusoid_run):
  with pytest.raises(ValueError, match='export it first'):
    model_lib.load_compact(sparse_sinusoid_run)


@pytest.mark.parametrize('granularity', ['hidden_unit', 'weight+hidden_unit'])
def test_sequence_lstm_with_hidden_unit_gates_exports_exactly(tmp_path, granularity):
  from tests.experiments import test_rnn_problems  # pylint: disable=import-outside-toplevel
  config = test_rnn_problems._tiny_sequence({  # pylint: disable=protected-access
      'gates.granularity': granularity, 'sparsity.target_sparsity': 0.5, 'sparsity.harden_at_fraction': 0.5,
      'eval.num_tasks': 8})
  train.run(config, str(tmp_path / 'run'))
  document = export.export_run(str(tmp_path / 'run'), str(tmp_path / 'out'), num_check_tasks=8)
  assert document['max_abs_output_diff'] <= 1e-5
  assert document['layer_shapes']['after']['recurrent_kernel'][0] < 6  # Closed hidden units are gone.
  held = document['held_out']
  assert held['exported']['mean'] == pytest.approx(held['masked']['mean'], rel=1e-4)


def test_export_speed_benchmark_reports_every_model(sparse_sinusoid_run, tmp_path):
  from benchmarks import export_speed  # pylint: disable=import-outside-toplevel
  export.export_run(sparse_sinusoid_run, str(tmp_path / 'out'), num_check_tasks=2)
  result = export_speed.run(sparse_sinusoid_run, {'export': str(tmp_path / 'out')}, batches=(1, 8), repeats=1,
                            calls=1)
  assert set(result['batches']['8']['median_us']) == {'dense', 'masked', 'export'}
  assert 0 < result['flop_ratio']['export'] < 0.5  # 90% of the weights gated: most neurons gone.
  assert result['bytes']['export'] < result['dense_bytes']
