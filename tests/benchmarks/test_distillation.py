"""``benchmarks.distillation`` end to end on the smoke config: teacher, two students, a paired comparison."""

import numpy as np

from benchmarks import distillation


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
