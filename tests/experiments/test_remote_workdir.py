"""A run in ``gs://BUCKET/run``: every file arrives in the bucket and none in a local ``./gs:`` folder; orbax's
commit-file checkpoints are listed and resumed. The bucket is ``fake_gcs`` (offline: epath and tensorstore both
reach it)."""

import importlib.util
import json
import os

import pytest

from experiments import train
from experiments import workdir as workdir_lib
from experiments.configs import smoke
from metaprune_jax import checkpoint
from tests import test_utils
from tests.experiments import fake_gcs

WORKDIR = 'gs://bucket/run'
RUN_FILES = ['checkpoints', 'config.json', 'evaluation.png', 'metrics.jsonl', 'model_spec.json', 'report.md',
             'summary.json', 'training.png']


def _config():
  config = smoke.get_config()
  config.outer.num_outer_steps = 10
  config.run.log_every_steps = config.run.checkpoint_every_steps = 5
  config.eval.num_tasks, config.eval.steps = 4, (1,)
  config.run.tensorboard = False  # tensorboardX reaches gs:// with google-cloud-storage only, not the fake.
  return config


def _records(path):
  with open(path) as f:
    return [{k: v for k, v in json.loads(line).items() if k != 'steps_per_sec'} for line in f]


def test_uris_stay_uris():
  assert checkpoint.is_remote(WORKDIR) and not checkpoint.is_remote('runs/sinusoid_seed0')
  assert checkpoint.checkpoint_dir(WORKDIR) == 'gs://bucket/run/checkpoints'
  assert checkpoint.checkpoint_dir('runs/x') == os.path.abspath('runs/x/checkpoints')
  assert workdir_lib.absolute(WORKDIR) == WORKDIR
  assert workdir_lib.output_path(WORKDIR, None, 'episodes_eval.json') == 'gs://bucket/run/episodes_eval.json'


@pytest.mark.skipif(importlib.util.find_spec('gcsfs') is not None, reason='gcsfs is installed: gs:// is reachable')
def test_unreachable_filesystem_names_the_fix(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match='pip install gcsfs'):
    train.run(_config(), WORKDIR)
  assert not os.listdir(tmp_path)  # Nothing written, no ./gs: folder.


def test_run_in_a_bucket_writes_every_file_there_and_resumes(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # A URI turned into a local path would land here, as ./gs:/bucket/run.
  root = tmp_path / 'gcs'
  run = root / 'bucket' / 'run'
  with fake_gcs.fake_gcs(str(root)):
    summary = train.run(_config(), WORKDIR)
    assert [step for step, _ in checkpoint.list_checkpoints(WORKDIR)] == [5, 10]
    assert sorted(os.listdir(run)) == RUN_FILES  # No lock (remote), no temporary files.
    assert sorted(os.listdir(tmp_path)) == ['gcs']
    assert f'`{WORKDIR}`' in (run / 'report.md').read_text()
    first = _records(run / 'metrics.jsonl')
    assert [r['step'] for r in first] == [5, 10]

    # Killed while saving step 10: on gs:// the step folder exists, without orbax's commit marker.
    (run / 'checkpoints' / '10' / 'commit_success.txt').unlink()
    assert [step for step, _ in checkpoint.list_checkpoints(WORKDIR)] == [5]
    resumed = train.run(_config(), WORKDIR)
  assert [step for step, _ in checkpoint.list_checkpoints(str(run))] == [5, 10]
  assert _records(run / 'metrics.jsonl') == first
  assert resumed['timings']['start_step'] == 5
  test_utils.assert_close(resumed['eval']['sparse']['shots_5']['step_1']['mean'],
                          summary['eval']['sparse']['shots_5']['step_1']['mean'])
  assert sorted(os.listdir(tmp_path)) == ['gcs']
