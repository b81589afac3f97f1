"""Observability: TensorBoard events mirror metrics.jsonl; the run leaves report.md and PNG plots."""

import json
import os

import pytest

from experiments import monitor
from experiments import train
from experiments.configs import smoke
from tests import test_utils

pytest.importorskip('tensorboardX')


def test_run_writes_readable_events_and_a_report(tmp_path):
  config = smoke.get_config()
  summary = train.run(config, str(tmp_path))
  with open(tmp_path / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  scalars = monitor.read_scalars(str(tmp_path / 'tensorboard'))
  assert {'outer/query_loss', 'mask/realised_sparsity', 'outer/skipped_steps', 'steps_per_sec'} <= set(scalars)
  test_utils.assert_equal([s for s, _ in scalars['outer/query_loss']], [r['step'] for r in records])
  test_utils.assert_close([v for _, v in scalars['outer/query_loss']], [r['outer/query_loss'] for r in records],
                          rtol=1e-6)
  report = (tmp_path / 'report.md').read_text()
  mean = summary['eval']['sparse']['shots_5']['step_1']['mean']
  assert f'| sparse | 5 | 1 | {mean:.4f} |' in report
  for image in ('training.png', 'evaluation.png'):
    assert f'({image})' in report and (tmp_path / image).stat().st_size > 0


def test_writer_disabled_writes_nothing(tmp_path):
  writer = monitor.EventWriter(str(tmp_path / 'tb'), enabled=False)
  writer.write(1, {'a': 1.0})
  writer.close()
  assert not writer.active and not os.path.exists(tmp_path / 'tb')


def test_run_records_provenance_and_tensorboard_hparams(tmp_path):
  config = smoke.get_config()
  summary = train.run(config, str(tmp_path))
  record = summary['provenance']
  assert {'commit', 'dirty', 'jax', 'jaxlib', 'backend', 'devices', 'num_devices', 'process_count', 'host',
          'started'} <= set(record)
  assert record['process_count'] == 1 and record['started'].endswith('+00:00')
  report = (tmp_path / 'report.md').read_text()
  assert f"{record['process_count']} process(es) on {record['host']}" in report
  scores = monitor.read_scalars(str(tmp_path / 'tensorboard' / 'hparams'))
  mean = summary['eval']['sparse']['shots_5']['step_1']['mean']
  assert scores['final/sparse/shots_5/step_1'] == [(config.outer.num_outer_steps, pytest.approx(mean, rel=1e-6))]
  flat = monitor.hparams(config)
  assert flat['outer.meta_batch_size'] == config.outer.meta_batch_size and flat['model.hidden_sizes'] == '(8, 8)'
