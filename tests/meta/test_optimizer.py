"""The outer optimiser: Adam with one learning rate per meta-parameter group."""

import jax
import jax.numpy as jnp
import optax
import pytest

from metaprune_jax.meta import optimizer as outer_optimizer
from tests import test_utils


def _tree():
  return {'params': {'w': jnp.array([1.0, -2.0, 0.5]), 'b': jnp.array([0.3])},
          'gate_logits': {'w': jnp.array([3.0, 3.0, 3.0]), 'b': None},
          'inner_lrs': {'w': jnp.full((3,), 0.01), 'b': jnp.full((1,), 0.01)}}


def _grads(i):
  """A different gradient every step, so Adam's moments matter."""
  leaves, treedef = jax.tree.flatten(_tree())
  keys = jax.random.split(jax.random.key(i), len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def test_each_group_gets_exactly_adam_with_its_own_learning_rate():
  rates = {'params': 1e-3, 'gate_logits': 5e-2, 'inner_lrs': 2e-4}
  transform = outer_optimizer.outer_optimizer(rates)
  params = _tree()
  state = transform.init(params)
  references = {name: optax.adam(lr) for name, lr in rates.items()}
  ref_params = dict(params)
  ref_states = {name: references[name].init(params[name]) for name in rates}
  for i in range(4):
    grads = _grads(i)
    updates, state = transform.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    for name, reference in references.items():
      ref_updates, ref_states[name] = reference.update(grads[name], ref_states[name], ref_params[name])
      ref_params[name] = optax.apply_updates(ref_params[name], ref_updates)
    test_utils.assert_trees_all_close(params, ref_params, rtol=1e-6, atol=1e-8)
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), params, _tree())
  assert moved['gate_logits']['w'] > 10 * moved['params']['w']  # The rates really differ per group.


def test_a_missing_group_is_named():
  transform = outer_optimizer.outer_optimizer({'params': 1e-3, 'gate_logits': 1e-2})
  with pytest.raises(ValueError, match=r"no learning rate for the meta-parameter groups \['inner_lrs'\]"):
    transform.init(_tree())


def test_dense_meta_params_keep_their_none_gate_group():
  transform = outer_optimizer.outer_optimizer({'params': 1e-2, 'gate_logits': 1e-2})
  params = {'params': {'w': jnp.ones(2)}, 'gate_logits': None}
  updates, _ = transform.update({'params': {'w': jnp.ones(2)}, 'gate_logits': None}, transform.init(params), params)
  assert updates['gate_logits'] is None
  test_utils.assert_close(updates['params']['w'], -1e-2 * jnp.ones(2), rtol=1e-5)


def test_group_learning_rate_schedules_follow_the_update_count():
  schedule = lambda count: 0.1 / (1.0 + count)  # pylint: disable=unnecessary-lambda-assignment
  transform = outer_optimizer.outer_optimizer({'params': schedule, 'gate_logits': 0.5})
  grads = {'params': {'w': jnp.ones((2,))}, 'gate_logits': {'w': jnp.ones((2,))}}
  state = transform.init(grads)
  for count in range(3):  # A constant gradient: Adam's bias-corrected direction is 1.
    scaled, state = transform.update(grads, state)
    test_utils.assert_close(scaled['params']['w'], -schedule(count) * jnp.ones((2,)), rtol=2e-5)
    test_utils.assert_close(scaled['gate_logits']['w'], -0.5 * jnp.ones((2,)), rtol=2e-5)


def test_gradient_clipping_comes_first():
  rates = {'params': 1e-2, 'gate_logits': 1e-2, 'inner_lrs': 1e-2}
  clipped, plain = outer_optimizer.outer_optimizer(rates, grad_clip_norm=0.5), outer_optimizer.outer_optimizer(rates)
  reference = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-2))
  params = _tree()
  states = {'clipped': clipped.init(params), 'plain': plain.init(params), 'reference': reference.init(params)}
  for i, scale in enumerate((100.0, 0.01)):  # Norms far above, then below the clip: Adam alone is not scale-free.
    grads = jax.tree.map(lambda g, s=scale: s * g, _grads(i))
    updates = {}
    for name, transform in (('clipped', clipped), ('plain', plain), ('reference', reference)):
      updates[name], states[name] = transform.update(grads, states[name], params)
    test_utils.assert_trees_all_close(updates['clipped'], updates['reference'], rtol=1e-6, atol=1e-8)
  assert float(jnp.max(jnp.abs(updates['clipped']['params']['w'] - updates['plain']['params']['w']))) > 1e-4
