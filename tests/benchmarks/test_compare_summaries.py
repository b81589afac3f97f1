"""``compare_summaries.differences``: equal trees give nothing, every changed or missing leaf is named."""

import math

from benchmarks import compare_summaries


def test_equal_summaries_have_no_differences_and_nan_equals_nan():
  tree = {'sparse': {'shots_5': {'step_1': {'mean': 0.5, 'ci95': math.nan, 'num_tasks': 20}}}}
  assert compare_summaries.differences(tree, {'sparse': {'shots_5': {'step_1': dict(tree['sparse']['shots_5'][
      'step_1'])}}}) == []


def test_changed_missing_and_timing_fields():
  a = {'x': {'mean': 1.0, 'n': 3, 'gone': 2.0}, 'timings': {'train_seconds': 1.0}}
  b = {'x': {'mean': 1.0 + 1e-6, 'n': 4}, 'timings': {'train_seconds': 9.0}}
  found = {d['path']: d for d in compare_summaries.differences(a, b)}
  assert set(found) == {'/x/mean', '/x/n', '/x/gone'}
  assert abs(found['/x/mean']['relative'] - 1e-6 / (1.0 + 1e-6)) < 1e-12
  assert found['/x/gone']['b'] is None
