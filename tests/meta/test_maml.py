"""The MAML learners: meta-gradients vs finite differences, first order, gate gradients, FOMAML and ANIL."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.masks import hard_concrete
from metaprune_jax.meta import maml
from metaprune_jax.meta.settings import Execution
from metaprune_jax.meta.settings import InnerSettings
from tests import test_utils
from tests.meta import common


@pytest.mark.parametrize('adapt_gates', [False, True])
def test_second_order_meta_gradient_matches_finite_differences(adapt_gates):
  with jax.enable_x64(True):
    meta_params, tasks, loss_fn = common.mlp_problem(hidden=(3,), num_tasks=2, shots=3)
    meta_params = jax.tree.map(lambda x: x.astype(jnp.float64), meta_params)
    tasks = jax.tree.map(lambda x: x.astype(jnp.float64), tasks)
    settings = InnerSettings(inner_lr=0.1, num_inner_steps=2, adapt_gates=adapt_gates, inner_gate_lr=0.3)
    learner = maml.maml(loss_fn, execution=Execution(noise='threefry'))
    key = jax.random.key(3)
    def f(mp):
      return learner.batch_loss(mp, tasks, key, settings=settings)
    grads = jax.grad(f)(meta_params)
    flat, unravel = jax.flatten_util.ravel_pytree(meta_params)
    g_flat, _ = jax.flatten_util.ravel_pytree(grads)
    direction = jax.random.normal(jax.random.key(4), flat.shape, jnp.float64)
    eps = 1e-5
    fd = (f(unravel(flat + eps * direction)) - f(unravel(flat - eps * direction))) / (2 * eps)
    test_utils.assert_close(jnp.dot(g_flat, direction), fd, rtol=1e-5, atol=1e-9)
    assert abs(float(fd)) > 1e-6  # A direction the loss actually moves along.


def _float64_dense_problem():
  """``(meta_params, tasks, loss_fn)`` of a 1-3-1 tanh MLP (10 weights, no gates) and 2 tasks, in float64."""
  meta_params, tasks, loss_fn = common.mlp_problem(hidden=(3,), num_tasks=2, shots=3)
  params = jax.tree.map(lambda x: x.astype(jnp.float64), meta_params['params'])
  return {'params': params, 'gate_logits': None}, jax.tree.map(lambda x: x.astype(jnp.float64), tasks), loss_fn


def _central_differences(f, flat, unravel, eps=1e-5):
  """``[n]``: ``(f(x + eps e_i) - f(x - eps e_i)) / (2 eps)`` for every coordinate ``i`` of ``flat [n]``."""
  basis = jnp.eye(flat.shape[0], dtype=flat.dtype)
  return jnp.array([(f(unravel(flat + eps * e)) - f(unravel(flat - eps * e))) / (2 * eps) for e in basis])


@pytest.mark.parametrize('num_inner_steps', [1, 2])
def test_second_order_meta_gradient_matches_central_differences_in_every_coordinate(num_inner_steps):
  # The CI stand-in for tests/benchmarks/test_torch_func_reference.py (skipped where torch is absent): plain
  # MAML, gates off, checked against the outer loss itself rather than another implementation.
  with jax.enable_x64(True):
    meta_params, tasks, loss_fn = _float64_dense_problem()
    flat, unravel = jax.flatten_util.ravel_pytree(meta_params)

    def meta_gradient(first_order):
      settings = InnerSettings(inner_lr=0.3, num_inner_steps=num_inner_steps, first_order=first_order)
      f = jax.jit(lambda mp: maml.maml(loss_fn).batch_loss(mp, tasks, jax.random.key(0), settings=settings,
                                                            gate_mode='off'))
      return f, jax.flatten_util.ravel_pytree(jax.grad(f)(meta_params))[0]

    outer_loss, second_order = meta_gradient(first_order=False)
    expected = _central_differences(outer_loss, flat, unravel)
    assert expected.shape == (10,) and float(jnp.abs(expected).min()) > 1e-6  # Every coordinate moves the loss.
    test_utils.assert_close(second_order, expected, rtol=1e-6, atol=1e-9)
    # The check sees the second-order term: the first-order gradient, which drops it, is far outside the tolerance.
    _, first_order = meta_gradient(first_order=True)
    assert float(jnp.max(jnp.abs(first_order - expected))) > 1e3 * float(jnp.max(1e-6 * jnp.abs(expected) + 1e-9))


@pytest.mark.parametrize('num_inner_steps', [1, 2])
def test_first_order_meta_gradient_is_the_query_gradient_at_the_adapted_params(num_inner_steps):
  with jax.enable_x64(True):
    meta_params, tasks, loss_fn = _float64_dense_problem()
    inner_lr = 0.3
    expected = []
    for i in range(2):  # FOMAML's definition, written out: plain SGD on the support set, then grad at the end.
      t = common.task(tasks, i)
      adapted = meta_params['params']
      for _ in range(num_inner_steps):
        grads = jax.grad(loss_fn)(adapted, t.support_inputs, t.support_targets)
        adapted = jax.tree.map(lambda w, g: w - inner_lr * g, adapted, grads)
      expected.append(jax.grad(loss_fn)(adapted, t.query_inputs, t.query_targets))
    expected = jax.tree.map(lambda *g: sum(g) / len(g), *expected)
    settings = InnerSettings(inner_lr=inner_lr, num_inner_steps=num_inner_steps)
    ours = jax.grad(lambda mp: maml.fomaml(loss_fn).batch_loss(mp, tasks, jax.random.key(0), settings=settings,
                                                                gate_mode='off'))(meta_params)
    test_utils.assert_trees_all_close(ours['params'], expected, rtol=1e-12, atol=1e-14)


def _first_order_reference(loss_fn, task, inner_lr):
  """One inner step with gates held at their deterministic values and the inner gradient a constant."""
  def reference(mp):
    masks = hard_concrete.deterministic_gates(mp['gate_logits'])
    def effective(p):
      return jax.tree.map(lambda w, m: w if m is None else w * m, p, masks, is_leaf=lambda x: x is None)

    def support(p):
      return loss_fn(effective(p), task.support_inputs, task.support_targets)
    g = jax.lax.stop_gradient(jax.grad(support)(mp['params']))
    adapted = jax.tree.map(lambda p, gg: p - inner_lr * gg, mp['params'], g)
    return loss_fn(effective(adapted), task.query_inputs, task.query_targets)
  return reference


@pytest.mark.parametrize('learner_name', ['maml_first_order_setting', 'fomaml'])
def test_first_order_equals_stop_gradient_reference(learner_name):
  meta_params, tasks, loss_fn = common.mlp_problem(init_logit=0.5)
  task = common.task(tasks, 0)
  if learner_name == 'fomaml':  # FOMAML is first order whatever the settings say.
    learner, settings = maml.fomaml(loss_fn), InnerSettings(inner_lr=0.05, first_order=False)
  else:
    learner, settings = maml.maml(loss_fn), InnerSettings(inner_lr=0.05, first_order=True)
  ours = jax.grad(lambda mp: learner.task_loss(mp, task, None, settings=settings, gate_mode='deterministic'))(
      meta_params)
  expected = jax.grad(_first_order_reference(loss_fn, task, 0.05))(meta_params)
  test_utils.assert_trees_all_close(ours, expected, rtol=1e-5, atol=1e-7)
  second = jax.grad(lambda mp: maml.maml(loss_fn).task_loss(mp, task, None, settings=InnerSettings(inner_lr=0.05),
                                                            gate_mode='deterministic'))(meta_params)
  assert not np.allclose(second['params']['Dense_0']['kernel'], ours['params']['Dense_0']['kernel'], rtol=1e-4)


@pytest.mark.parametrize('granularity', hard_concrete.GRANULARITIES)
def test_gradients_reach_gate_logits(granularity):
  meta_params, tasks, loss_fn = common.mlp_problem(granularity=granularity)
  grads = jax.grad(lambda mp: maml.maml(loss_fn).batch_loss(mp, tasks, jax.random.key(5),
                                                            settings=InnerSettings()))(meta_params)
  for leaf in jax.tree.leaves(grads['gate_logits']):
    assert float(jnp.abs(leaf).sum()) > 0.0
  test_utils.assert_all_finite(grads)


def test_factories_name_their_learner_and_bind_the_execution():
  _, _, loss_fn = common.mlp_problem()
  execution = Execution(python_loop=True, task_chunk_size=2)
  built = {'maml': maml.maml(loss_fn, execution=execution), 'fomaml': maml.fomaml(loss_fn, execution=execution),
           'anil': maml.anil(loss_fn, head_keys=('Dense_1',), execution=execution)}
  for name, learner in built.items():
    assert learner.name == name and learner.execution == execution
    assert learner.init_extra({'w': jnp.ones(2)}, InnerSettings()) == {}
  with pytest.raises(ValueError, match='head_keys'):
    maml.anil(loss_fn, head_keys=())


def test_anil_adapts_only_the_head():
  meta_params, tasks, loss_fn = common.mlp_problem()
  task, settings = common.task(tasks, 0), InnerSettings(inner_lr=0.5, num_inner_steps=2)
  dense = {'params': meta_params['params'], 'gate_logits': None}
  anil = maml.anil(loss_fn, head_keys=('Dense_1',))
  grads = jax.grad(lambda mp: anil.task_loss(mp, task, None, settings=settings, gate_mode='off'))(dense)
  assert float(jnp.abs(grads['params']['Dense_0']['kernel']).sum()) > 0  # The body gets outer gradients.
  # With the head alone adapted, the query loss differs from MAML's (which adapts the body too).
  full = maml.maml(loss_fn).task_loss(dense, task, None, settings=settings, gate_mode='off')
  assert float(anil.task_loss(dense, task, None, settings=settings, gate_mode='off')) != float(full)


def test_task_traces_start_unadapted_and_end_at_the_task_loss():
  meta_params, tasks, loss_fn = common.mlp_problem()
  task, settings = common.task(tasks, 2), InnerSettings(inner_lr=0.05, num_inner_steps=3)
  learner = maml.maml(loss_fn)
  traces = learner.task_traces(meta_params, task, settings=settings, gate_mode='deterministic')
  assert set(traces) == {'loss'} and traces['loss'].shape == (4,)
  test_utils.assert_close(traces['loss'][-1], learner.task_loss(meta_params, task, None, settings=settings,
                                                                gate_mode='deterministic'), rtol=1e-6)
  with pytest.raises(ValueError, match='fixed gates'):
    learner.task_traces(meta_params, task, settings=settings, gate_mode='sample')
