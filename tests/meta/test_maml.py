"""MAML with gates: vmap vs loop, meta-gradients vs finite differences, first order, gate gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax import losses
from metaprune_jax.masks import hard_concrete
from metaprune_jax.meta import maml
from metaprune_jax.nets import mlp
from metaprune_jax.tasks import sinusoid
from tests import test_utils


def _setup(hidden=(6,), granularity='weight', num_tasks=3, shots=4):
  model = mlp.make_mlp(hidden, 1, 'tanh')
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']
  gates = hard_concrete.init_gate_logits(params, granularity, init_logit=0.5)
  tasks = sinusoid.sample_sinusoid_tasks(jax.random.key(1), num_tasks=num_tasks, num_support=shots,
                                         num_query=shots)
  return {'params': params, 'gate_logits': gates}, tasks, losses.mse_loss(model.apply)


def _task(tasks, i):
  return jax.tree.map(lambda x: x[i], tasks)


@pytest.mark.parametrize('gate_mode', maml.GATE_MODES)
def test_vmap_over_tasks_equals_python_loop(gate_mode):
  meta_params, tasks, loss_fn = _setup()
  settings = maml.InnerSettings(inner_lr=0.05, num_inner_steps=2)
  key = jax.random.key(2)
  batched = maml.batch_query_loss(meta_params, tasks, key, loss_fn=loss_fn, settings=settings, gate_mode=gate_mode)
  noise = maml.sample_gate_noise(meta_params['gate_logits'], key, settings.noise, num_tasks=3)
  looped = np.mean([maml.task_query_loss(meta_params, _task(tasks, i), None, loss_fn=loss_fn, settings=settings,
                                         gate_mode=gate_mode, noise=jax.tree.map(lambda n, i=i: n[i], noise))
                    for i in range(3)])
  test_utils.assert_close(batched, looped, rtol=1e-5)


@pytest.mark.parametrize('adapt_gates', [False, True])
def test_second_order_meta_gradient_matches_finite_differences(adapt_gates):
  with jax.enable_x64(True):
    meta_params, tasks, loss_fn = _setup(hidden=(3,), num_tasks=2, shots=3)
    meta_params = jax.tree.map(lambda x: x.astype(jnp.float64), meta_params)
    tasks = jax.tree.map(lambda x: x.astype(jnp.float64), tasks)
    settings = maml.InnerSettings(inner_lr=0.1, num_inner_steps=2, adapt_gates=adapt_gates, inner_gate_lr=0.3,
                                  noise='threefry')
    key = jax.random.key(3)
    f = lambda mp: maml.batch_query_loss(mp, tasks, key, loss_fn=loss_fn, settings=settings)
    grads = jax.grad(f)(meta_params)
    flat, unravel = jax.flatten_util.ravel_pytree(meta_params)
    g_flat, _ = jax.flatten_util.ravel_pytree(grads)
    direction = jax.random.normal(jax.random.key(4), flat.shape, jnp.float64)
    eps = 1e-5
    fd = (f(unravel(flat + eps * direction)) - f(unravel(flat - eps * direction))) / (2 * eps)
    test_utils.assert_close(jnp.dot(g_flat, direction), fd, rtol=1e-5, atol=1e-9)


def test_first_order_equals_stop_gradient_reference():
  meta_params, tasks, loss_fn = _setup()
  settings = maml.InnerSettings(inner_lr=0.05, num_inner_steps=1, first_order=True)
  task = _task(tasks, 0)
  def reference(mp):
    masks = hard_concrete.deterministic_gates(mp['gate_logits'])
    effective = lambda p: jax.tree.map(lambda w, m: w if m is None else w * m, p, masks)
    support = lambda p: loss_fn(effective(p), task.support_inputs, task.support_targets)
    g = jax.lax.stop_gradient(jax.grad(support)(mp['params']))
    adapted = jax.tree.map(lambda p, gg: p - 0.05 * gg, mp['params'], g)
    return loss_fn(effective(adapted), task.query_inputs, task.query_targets)

  ours = jax.grad(lambda mp: maml.task_query_loss(mp, task, jax.random.key(0), loss_fn=loss_fn,
                                                  settings=settings, gate_mode='deterministic'))(meta_params)
  test_utils.assert_trees_all_close(ours, jax.grad(reference)(meta_params), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('granularity', hard_concrete.GRANULARITIES)
def test_gradients_reach_gate_logits(granularity):
  meta_params, tasks, loss_fn = _setup(granularity=granularity)
  grads = jax.grad(lambda mp: maml.batch_query_loss(mp, tasks, jax.random.key(5), loss_fn=loss_fn,
                                                    settings=maml.InnerSettings()))(meta_params)
  for leaf in jax.tree.leaves(grads['gate_logits']):
    assert float(jnp.abs(leaf).sum()) > 0.0
  test_utils.assert_all_finite(grads)


def test_gates_are_sampled_independently_per_task():
  meta_params, _, _ = _setup()
  noise = maml.sample_gate_noise(meta_params['gate_logits'], jax.random.key(6), 'hash', num_tasks=3)
  for leaf in jax.tree.leaves(noise):
    assert leaf.shape[0] == 3
    assert not np.allclose(leaf[0], leaf[1]) and not np.allclose(leaf[1], leaf[2])


def test_batch_scope_gives_every_task_the_same_gate_sample():
  meta_params, tasks, loss_fn = _setup()
  settings = maml.InnerSettings(inner_lr=0.05, gate_sample_scope='batch')
  key = jax.random.key(7)
  loss_and_grad = lambda s: jax.value_and_grad(lambda mp: maml.batch_query_loss(  # pylint: disable=g-long-lambda
      mp, tasks, key, loss_fn=loss_fn, settings=s))(meta_params)
  shared, shared_grads = loss_and_grad(settings)
  noise = maml.sample_gate_noise(meta_params['gate_logits'], key, settings.noise)
  assert all(leaf.shape == gate.shape for leaf, gate in zip(jax.tree.leaves(noise),
                                                            jax.tree.leaves(meta_params['gate_logits'])))
  looped = np.mean([maml.task_query_loss(meta_params, _task(tasks, i), None, loss_fn=loss_fn, settings=settings,
                                         noise=noise) for i in range(3)])
  test_utils.assert_close(shared, looped, rtol=1e-5)
  per_task, per_task_grads = loss_and_grad(settings._replace(gate_sample_scope='task'))
  assert abs(float(per_task) - float(shared)) > 1e-6  # Independent samples give another estimate.
  for grads in (shared_grads, per_task_grads):
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads['gate_logits']))
  with pytest.raises(ValueError, match='gate_sample_scope'):
    maml.batch_query_loss(meta_params, tasks, key, loss_fn=loss_fn,
                          settings=settings._replace(gate_sample_scope='episode'))


def test_gates_off_ignores_gate_logits_and_adapt_gates_changes_the_result():
  meta_params, tasks, loss_fn = _setup()
  task = _task(tasks, 0)
  run = functools.partial(maml.task_query_loss, task=task, key=jax.random.key(0), loss_fn=loss_fn)
  dense = {'params': meta_params['params'], 'gate_logits': None}
  test_utils.assert_close(run(meta_params, settings=maml.InnerSettings(), gate_mode='off'),
                          run(dense, settings=maml.InnerSettings(), gate_mode='sample'))
  plain = run(meta_params, settings=maml.InnerSettings(inner_lr=0.05), gate_mode='deterministic')
  adapted = run(meta_params, settings=maml.InnerSettings(inner_lr=0.05, adapt_gates=True, inner_gate_lr=1.0),
                gate_mode='deterministic')
  assert float(plain) != float(adapted)


def test_unknown_gate_mode_is_rejected():
  meta_params, tasks, loss_fn = _setup()
  with pytest.raises(ValueError, match='gate_mode'):
    maml.task_query_loss(meta_params, _task(tasks, 0), jax.random.key(0), loss_fn=loss_fn,
                         settings=maml.InnerSettings(), gate_mode='sometimes')
