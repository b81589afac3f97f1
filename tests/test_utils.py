"""The one place test assertions go through (STYLE habit 9)."""

import numpy as np
import jax


def assert_trees_all_close(actual, expected, rtol=1e-6, atol=1e-6):
  """Both pytrees have the same structure and leaves close within tolerance."""
  a_leaves, a_def = jax.tree.flatten(actual)
  e_leaves, e_def = jax.tree.flatten(expected)
  assert a_def == e_def, f'tree structures differ: {a_def} vs {e_def}'
  for a, e in zip(a_leaves, e_leaves):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol)


def assert_trees_all_equal(actual, expected):
  """Both pytrees have the same structure and bitwise-equal leaves."""
  a_leaves, a_def = jax.tree.flatten(actual)
  e_leaves, e_def = jax.tree.flatten(expected)
  assert a_def == e_def, f'tree structures differ: {a_def} vs {e_def}'
  for a, e in zip(a_leaves, e_leaves):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def assert_close(actual, expected, rtol=1e-6, atol=1e-6, err_msg=''):
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol, err_msg=err_msg)


def assert_equal(actual, expected, err_msg=''):
  np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected), err_msg=err_msg)


def assert_all_finite(tree):
  for leaf in jax.tree.leaves(tree):
    assert np.all(np.isfinite(np.asarray(leaf))), 'non-finite values found'


class CompileCounter:
  """Counts how often a jitted function is traced; use to guard against retracing.

  Usage: ``counter = CompileCounter(); fn = jax.jit(counter.wrap(raw_fn))``;
  ``counter.count`` increments once per trace.
  """

  def __init__(self):
    self.count = 0

  def wrap(self, fn):
    def wrapped(*args, **kwargs):
      self.count += 1
      return fn(*args, **kwargs)
    return wrapped
