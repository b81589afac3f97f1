"""metaprune_jax/masks is the ground floor: it imports nothing from the packages built on it."""

import ast
import pathlib

import pytest

MASKS_DIR = pathlib.Path(__file__).resolve().parents[2] / 'metaprune_jax' / 'masks'
FORBIDDEN = tuple(f'metaprune_jax.{name}' for name in ('nets', 'meta', 'tasks', 'data', 'pruning'))


def _imported_modules(tree: ast.AST) -> list[str]:
  """Every module an ``import`` / ``from ... import`` names, with ``from pkg import mod`` as ``pkg.mod``."""
  names = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.extend(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.append(node.module)
      names.extend(f'{node.module}.{alias.name}' for alias in node.names)
  return names


def _forbidden(module: str) -> bool:
  return any(module == f or module.startswith(f + '.') for f in FORBIDDEN)


def test_the_masks_package_has_modules():
  assert len(list(MASKS_DIR.glob('*.py'))) >= 5


@pytest.mark.parametrize('path', sorted(MASKS_DIR.glob('*.py')), ids=lambda p: p.name)
def test_masks_module_imports_nothing_above_the_floor(path):
  tree = ast.parse(path.read_text(), filename=str(path))
  bad = sorted({m for m in _imported_modules(tree) if _forbidden(m)})
  assert not bad, f'{path.name} imports {bad}; metaprune_jax/masks may import only jax, numpy, types and masks/.'


def test_the_check_catches_each_import_form():
  for source in ('import metaprune_jax.nets.rnn', 'from metaprune_jax.nets import rnn',
                 'from metaprune_jax import meta', 'from metaprune_jax.pruning.select import topk_masks'):
    assert any(_forbidden(m) for m in _imported_modules(ast.parse(source))), source
  assert not any(_forbidden(m) for m in _imported_modules(ast.parse('from metaprune_jax import types')))
