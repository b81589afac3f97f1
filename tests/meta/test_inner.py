"""Inner loop: scan of SGD steps, traces, per-leaf learning rates, first order."""

import jax
import jax.numpy as jnp

from metaprune_jax.meta import inner
from tests import test_utils


def _quadratic(target):
  return lambda w: jnp.sum((w['a'] - target) ** 2) + jnp.sum(w['b'] ** 2)


def test_adapt_matches_hand_written_sgd_and_lowers_the_loss():
  loss = _quadratic(jnp.array([1.0, -2.0]))
  w = {'a': jnp.zeros(2), 'b': jnp.ones(3)}
  expected = w
  for _ in range(3):
    g = jax.grad(loss)(expected)
    expected = jax.tree.map(lambda p, gg: p - 0.1 * gg, expected, g)
  adapted = inner.adapt(loss, w, inner_lr=0.1, num_inner_steps=3)
  test_utils.assert_trees_all_close(adapted, expected)
  assert float(loss(adapted)) < float(loss(w))


def test_trace_records_before_and_after_every_step():
  loss = _quadratic(jnp.array([1.0, -2.0]))
  w = {'a': jnp.zeros(2), 'b': jnp.ones(3)}
  _, trace = inner.adapt(loss, w, inner_lr=0.1, num_inner_steps=4, trace_fn=loss)
  assert trace.shape == (5,)
  test_utils.assert_close(trace[0], loss(w))
  assert all(float(trace[i + 1]) < float(trace[i]) for i in range(4))


def test_zero_steps_is_identity_and_per_leaf_lrs_apply():
  loss = _quadratic(jnp.array([1.0, -2.0]))
  w = {'a': jnp.zeros(2), 'b': jnp.ones(3)}
  test_utils.assert_trees_all_equal(inner.adapt(loss, w, inner_lr=0.1, num_inner_steps=0), w)
  adapted = inner.adapt(loss, w, inner_lr={'a': 0.0, 'b': 0.5}, num_inner_steps=1)
  test_utils.assert_trees_all_equal(adapted['a'], w['a'])
  test_utils.assert_close(adapted['b'], jnp.zeros(3))


def test_first_order_drops_the_hessian_term():
  # f(w) = w^4 / 4, one step: w' = w - lr w^3; d w'/dw = 1 - 3 lr w^2 (second order) or 1 (first order).
  loss = lambda w: jnp.sum(w ** 4) / 4
  outer = lambda w, fo: inner.adapt(loss, w, inner_lr=0.1, num_inner_steps=1, first_order=fo).sum()
  w = jnp.array([1.5])
  test_utils.assert_close(jax.grad(outer)(w, False), 1 - 3 * 0.1 * 1.5 ** 2, rtol=1e-5)
  test_utils.assert_close(jax.grad(outer)(w, True), 1.0, rtol=1e-6)


def test_python_loop_equals_scan_with_traces_and_second_order_gradients():
  loss = lambda w: jnp.sum(w['a'] ** 4) / 4 + jnp.sum(jnp.sin(w['b']))
  w = {'a': jnp.array([1.5, -0.5]), 'b': jnp.array([0.3, 2.0, -1.0])}

  def run(python_loop):
    outer = lambda w: inner.adapt(loss, w, inner_lr=0.05, num_inner_steps=3, trace_fn=loss,
                                  python_loop=python_loop)
    (adapted, trace) = outer(w)
    grads = jax.grad(lambda w: loss(outer(w)[0]))(w)
    return adapted, trace, grads
  test_utils.assert_trees_all_close(run(True), run(False), rtol=1e-5, atol=1e-6)
