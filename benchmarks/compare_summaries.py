"""Compares the evaluation and sparsity of two runs' ``summary.json`` field by field; prints JSON.

``python -m benchmarks.compare_summaries --a=RUN_A/summary.json --b=RUN_B/summary.json`` lists every number
that differs (with both values and the relative difference) and the count; timings are ignored. Used to show
that a refactoring reproduces a run exactly.
"""

import json
import math

from absl import app
from absl import flags

_A = flags.DEFINE_string('a', None, 'First summary.json.', required=True)
_B = flags.DEFINE_string('b', None, 'Second summary.json.', required=True)
_SECTIONS = ('eval', 'sparsity', 'dense_reference')


def differences(a, b, path: str = '') -> list[dict]:
  """Every leaf of ``a`` that is missing from ``b`` or differs (NaN equals NaN), skipping ``timings``."""
  if isinstance(a, dict):
    out = []
    for key, value in a.items():
      if key == 'timings':
        continue
      if not isinstance(b, dict) or key not in b:
        out.append({'path': f'{path}/{key}', 'a': value, 'b': None})
      else:
        out.extend(differences(value, b[key], f'{path}/{key}'))
    return out
  if isinstance(a, float) and isinstance(b, float):
    if a == b or (math.isnan(a) and math.isnan(b)):
      return []
    return [{'path': path, 'a': a, 'b': b, 'relative': abs(a - b) / max(abs(a), abs(b))}]
  return [] if a == b else [{'path': path, 'a': a, 'b': b}]


def main(argv):
  del argv
  with open(_A.value) as f:
    a = json.load(f)
  with open(_B.value) as f:
    b = json.load(f)
  found = [d for section in _SECTIONS if section in a for d in differences(a[section], b.get(section), section)]
  print(json.dumps({'a': _A.value, 'b': _B.value, 'num_differences': len(found),
                    'max_relative': max((d.get('relative', math.inf) for d in found), default=0.0),
                    'differences': found[:50]}, indent=1))


if __name__ == '__main__':
  app.run(main)
