"""The README's notebook snippet runs as written."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_snippet_runs():
  with open(os.path.join(ROOT, 'README.md')) as f:
    blocks = re.findall(r'```python\n(.*?)```', f.read(), re.S)
  assert blocks, 'README has no python block'
  namespace = {}
  exec(compile(blocks[0], 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert int(namespace['state'].step) == 1
  assert 0.0 <= float(namespace['metrics']['mask/expected_sparsity']) < 1.0
