"""Trained tiny runs shared by the launcher tests (each trains once per test session)."""

import os

import pytest

from experiments import train
from experiments.configs import omniglot_tiny
from tests import shared_data


@pytest.fixture(scope='session')
def tiny_protonet_run(tmp_path_factory):
  """A 6-step dense ProtoNet on the tiny Omniglot config (``eval.split='test'``); the run folder, read-only by
  convention: a test that writes into a run copies it first."""
  if not os.path.isdir(shared_data.OMNIGLOT_DIR):
    pytest.skip('shared Omniglot data missing')
  config = omniglot_tiny.get_config()
  config.task.data_dir = shared_data.OMNIGLOT_DIR
  config.algorithm = 'protonet'
  workdir = str(tmp_path_factory.mktemp('tiny_protonet') / 'run')
  train.run(config, workdir)
  return workdir
