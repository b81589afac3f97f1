"""The meta-pruner's task encoder in runs: masks that differ across tasks, and old runs keep the old encoder."""

import os

import pytest

from experiments import config_check
from experiments import train
from experiments import validation
from experiments.configs import omniglot
from experiments.configs import omniglot_tiny
from experiments.configs import sinusoid
from experiments.configs import smoke
from tests import shared_data


def _tiny_meta_pruner(config, embedding):
  config.gates.mask = 'meta_pruner'
  config.gates.meta_pruner_hidden_sizes = (8,)
  config.gates.meta_pruner_embed_dim = 4
  config.gates.meta_pruner_embedding = embedding
  config.sparsity.harden_at_fraction = 0.5
  config.run.tensorboard = False
  return config


def test_sinusoid_run_with_the_normalized_embedding_gives_tasks_different_masks(tmp_path):
  config = _tiny_meta_pruner(smoke.get_config(), 'normalized')
  config.sparsity.target_sparsity = 0.5
  analysis = train.run(config, str(tmp_path))['meta_pruner']
  assert analysis['mean_pairwise_jaccard'] > 0.0


@pytest.mark.skipif(not os.path.isdir(shared_data.OMNIGLOT_DIR), reason='shared Omniglot data missing')
def test_omniglot_run_with_the_normalized_embedding_gives_tasks_different_masks(tmp_path):
  config = _tiny_meta_pruner(omniglot_tiny.get_config(), 'normalized')
  config.task.data_dir = shared_data.OMNIGLOT_DIR
  config.algorithm = 'protonet'
  analysis = train.run(config, str(tmp_path))['meta_pruner']
  assert analysis['realised_sparsity']['min'] == analysis['realised_sparsity']['max']
  assert analysis['mean_pairwise_jaccard'] > 0.0


@pytest.mark.parametrize('get_config', [sinusoid.get_config, omniglot.get_config])
def test_a_run_saved_before_the_field_existed_keeps_the_tanh_embedding(get_config):
  stored = get_config()
  del stored.gates['meta_pruner_embedding']
  assert 'gates.meta_pruner_embedding' in config_check.fill_missing(stored)
  assert stored.gates.meta_pruner_embedding == 'tanh'


def test_an_unknown_embedding_names_the_valid_ones():
  config = smoke.get_config()
  config.gates.meta_pruner_embedding = 'sigmoid'
  with pytest.raises(ValueError, match=r"--config.gates.meta_pruner_embedding='sigmoid' is invalid: use one of "
                                       r"\('tanh', 'normalized'\)"):
    validation.validate_gates_and_sparsity(config)


@pytest.mark.parametrize('get_config', [sinusoid.get_config, omniglot.get_config])
def test_a_run_saved_before_the_modulation_gain_existed_keeps_gain_one(get_config):
  stored = get_config()
  del stored.gates['meta_pruner_modulation_gain']
  assert 'gates.meta_pruner_modulation_gain' in config_check.fill_missing(stored)
  assert stored.gates.meta_pruner_modulation_gain == 1.0


@pytest.mark.parametrize('gain', [0.0, -1.0, float('nan')])
def test_a_modulation_gain_must_be_positive(gain):
  config = smoke.get_config()
  config.gates.meta_pruner_modulation_gain = gain
  with pytest.raises(ValueError, match=r'--config.gates.meta_pruner_modulation_gain=.* is invalid: must be a finite '
                                       r'number > 0'):
    validation.validate_gates_and_sparsity(config)
