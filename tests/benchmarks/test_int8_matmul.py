"""The int8 matmul benchmark runs end to end (--quick) and prints the JSON it promises."""

import json
import os
import subprocess
import sys

from benchmarks import int8_matmul

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_quick_run_prints_latencies_and_ratios_for_every_case():
  completed = subprocess.run([sys.executable, '-m', 'benchmarks.int8_matmul', '--quick'], cwd=_ROOT,
                             capture_output=True, text=True, timeout=120, check=True)
  report = json.loads(completed.stdout)
  assert report['benchmark'] == 'int8_matmul' and report['backend'] == 'cpu' and report['repeats'] == 2
  assert set(report['results']) == {f'{name}/batch600' for name in int8_matmul.SHAPES}
  for case in report['results'].values():
    assert set(case['median_us']) == set(int8_matmul.WAYS)
    assert all(v > 0 for v in case['median_us'].values())
    assert set(case['ratio_to_float32']) == {'weight_only', 'dynamic_int8', 'int8_gemm_only'}
    assert set(case['compile_seconds']) == set(int8_matmul.WAYS)
    assert case['lowering']['int8_gemm_only']['s8_dot_after_optimisation']
