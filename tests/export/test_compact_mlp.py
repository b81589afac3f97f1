"""``export.compact_mlp``: the compact MLP computes the masked MLP, before and after adaptation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.export import compact_mlp
from metaprune_jax.export import forward
from metaprune_jax.masks import masking
from metaprune_jax.nets import mlp


def _model_and_masks(seed, activation='relu', keep=(0.5, 0.2, 0.6), structured=False):
  rng = np.random.default_rng(seed)
  model = mlp.make_mlp((12, 10), 2, activation)
  params = jax.tree.map(np.asarray, model.init(jax.random.key(seed), jnp.zeros((1, 3)))['params'])
  for name in params:
    params[name]['bias'] = rng.normal(size=params[name]['bias'].shape).astype(np.float32)
  masks = {}
  for (name, leaf), p in zip(params.items(), keep):
    shape = (leaf['kernel'].shape[1],) if structured else leaf['kernel'].shape
    masks[name] = {'kernel': (rng.random(shape) < p).astype(np.float32), 'bias': None}
  return model, params, masks


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('adapts', [True, False])
@pytest.mark.parametrize('structured', [True, False])
def test_compact_outputs_equal_the_masked_model(seed, adapts, structured):
  model, params, masks = _model_and_masks(seed, structured=structured)
  x = jnp.asarray(np.random.default_rng(seed).normal(size=(16, 3)), jnp.float32)
  expected = model.apply({'params': masking.apply_masks(params, masks)}, x)
  compact = compact_mlp.compact_mlp(params, masks, adapts=adapts)
  np.testing.assert_allclose(forward.mlp_apply(compact.params, x), expected, atol=1e-5)
  kept = sum(len(v) for v in compact.kept_units.values())
  assert kept < 22  # Something was removed at these densities.


def test_units_with_no_fan_out_and_dead_units_are_removed_exactly():
  model, params, masks = _model_and_masks(0, keep=(1.0, 1.0, 1.0))
  masks['Dense_1']['kernel'][3, :] = 0  # Dense_0 neuron 3: no fan-out.
  masks['Dense_0']['kernel'][:, 5] = 0  # Dense_0 neuron 5: no fan-in, bias -1: ReLU dead for good.
  params['Dense_0']['bias'][5] = -1.0
  masks['Dense_0']['kernel'][:, 7] = 0  # Neuron 7: no fan-in, bias +1: a constant the masked model adapts.
  params['Dense_0']['bias'][7] = 1.0
  adapted = compact_mlp.compact_mlp(params, masks, adapts=True)
  assert list(adapted.kept_units['Dense_0']) == [i for i in range(12) if i not in (3, 5)]
  folded = compact_mlp.compact_mlp(params, masks, adapts=False)
  assert list(folded.kept_units['Dense_0']) == [i for i in range(12) if i not in (3, 5, 7)]
  x = jnp.linspace(-2, 2, 24, dtype=jnp.float32).reshape(8, 3)
  expected = model.apply({'params': masking.apply_masks(params, masks)}, x)
  for compact in (adapted, folded):
    np.testing.assert_allclose(forward.mlp_apply(compact.params, x), expected, atol=1e-5)


def test_a_layer_with_every_neuron_closed_passes_only_biases():
  model, params, masks = _model_and_masks(1, keep=(1.0, 1.0, 1.0))
  masks['Dense_1']['kernel'][:] = 0
  compact = compact_mlp.compact_mlp(params, masks, adapts=False)
  assert compact.params['Dense_1']['kernel'].shape[1] == 0
  x = jnp.ones((4, 3), jnp.float32)
  expected = model.apply({'params': masking.apply_masks(params, masks)}, x)
  np.testing.assert_allclose(forward.mlp_apply(compact.params, x), expected, atol=1e-5)


def test_gradient_steps_on_the_compact_model_match_the_masked_model():
  """One masked SGD step (step * pattern) on the compact model equals the masked model's weight-space step."""
  model, params, masks = _model_and_masks(2)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(10, 3)), jnp.float32)
  y = jnp.ones((10, 2), jnp.float32)
  masked = masking.apply_masks(params, masks)
  loss = lambda p: jnp.mean((model.apply({'params': p}, x) - y) ** 2)
  grads = jax.grad(loss)(masked)
  full_masks = jax.tree.map(lambda p, m: np.ones_like(p) if m is None else np.broadcast_to(m, p.shape),
                            params, masks, is_leaf=lambda v: v is None)
  stepped = jax.tree.map(lambda w, g, m: w - 0.1 * g * m * m, masked, grads, full_masks)
  compact = compact_mlp.compact_mlp(params, masks, adapts=True)
  compact_loss = lambda p: jnp.mean((forward.mlp_apply(p, x) - y) ** 2)
  compact_grads = jax.grad(compact_loss)(compact.params)
  compact_stepped = jax.tree.map(lambda w, g, m: w - 0.1 * g * (1.0 if m is None else m), compact.params,
                                 compact_grads, compact.masks, is_leaf=lambda v: v is None)
  x_test = jnp.asarray(np.random.default_rng(3).normal(size=(7, 3)), jnp.float32)
  np.testing.assert_allclose(forward.mlp_apply(compact_stepped, x_test),
                             model.apply({'params': stepped}, x_test), atol=1e-5)


def test_compacting_a_compact_model_changes_nothing():
  _, params, masks = _model_and_masks(4)
  once = compact_mlp.compact_mlp(params, masks)
  twice = compact_mlp.compact_mlp(once.params, jax.tree.map(
      lambda p, m: {'kernel': np.ones_like(p['kernel']) if m['kernel'] is None else m['kernel'], 'bias': None},
      once.params, once.masks, is_leaf=lambda v: isinstance(v, dict) and 'kernel' in v))
  for a, b in zip(jax.tree.leaves(once.params), jax.tree.leaves(twice.params)):
    np.testing.assert_array_equal(a, b)
