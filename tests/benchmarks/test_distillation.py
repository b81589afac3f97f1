"""``benchmarks.distillation`` end to end on the smoke config: teacher, two students, a paired comparison."""

import os

import numpy as np
import pytest

from benchmarks import distillation
from tests import shared_data


def test_paired_comparison_on_tiny_runs(tmp_path):
  result = distillation.run(task='sinusoid', config_path='experiments/configs/smoke.py', workdir=str(tmp_path),
                            sparsities=[0.9], seeds=[0], weight=0.5, steps=4)
  rows = result['comparisons']
  assert {(r['shots'], r['inner_step']) for r in rows} == {(5, 1), (5, 2), (10, 1), (10, 2)}
  for row in rows:
    assert row['num_tasks'] == 20
    diff = row['distilled']['mean'] - row['plain']['mean']
    np.testing.assert_allclose(row['difference']['mean'], diff, rtol=1e-6, atol=1e-9)
  assert (tmp_path / 'seed0' / 'teacher' / 'summary.json').exists()
  assert (tmp_path / 'seed0' / 'distilled_0.9' / 'summary.json').exists()


def test_classification_compares_accuracies_too(tmp_path):
  if not os.path.isdir(shared_data.OMNIGLOT_DIR):
    pytest.skip('shared Omniglot data missing')
  result = distillation.run(task='omniglot', config_path='experiments/configs/omniglot_tiny.py',
                            workdir=str(tmp_path), sparsities=[0.8], seeds=[0], weight=0.5, steps=3,
                            overrides={'task.data_dir': shared_data.OMNIGLOT_DIR, 'algorithm': 'protonet',
                                       'eval.num_tasks': 8, 'eval.steps': (0,)})
  rows = {r['metric']: r for r in result['comparisons']}
  assert set(rows) == {'query loss', 'query accuracy'}
  accuracy = rows['query accuracy']
  assert accuracy['num_tasks'] == 8 and 0.0 <= accuracy['plain']['mean'] <= 1.0
  np.testing.assert_allclose(accuracy['difference']['mean'], accuracy['distilled']['mean'] - accuracy['plain']['mean'],
                             rtol=1e-6, atol=1e-7)
