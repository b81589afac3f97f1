"""The masking helpers: all-ones masks are exactly dense, mask trees combine leafwise, counts."""

import jax
import jax.numpy as jnp
import pytest

from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import masking
from metaprune_jax.nets import mlp
from tests import test_utils


def _model_and_params():
  model = mlp.make_mlp((16, 16), 1)
  return model, model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']


@pytest.mark.parametrize('granularity', hard_concrete.GRANULARITIES)
def test_all_ones_mask_gives_exactly_the_dense_output(granularity):
  model, params = _model_and_params()
  ones = jax.tree.map(jnp.ones_like, hard_concrete.init_gate_logits(params, granularity))
  x = jax.random.normal(jax.random.key(1), (7, 1))
  test_utils.assert_trees_all_equal(model.apply({'params': masking.apply_masks(params, ones)}, x),
                                    model.apply({'params': params}, x))


def test_none_leaves_and_none_masks_leave_params_alone():
  _, params = _model_and_params()
  test_utils.assert_trees_all_equal(masking.apply_masks(params, None), params)
  gates = hard_concrete.init_gate_logits(params, 'weight')
  zeros = jax.tree.map(jnp.zeros_like, gates)
  out = masking.apply_masks(params, zeros)
  test_utils.assert_trees_all_equal(out['Dense_0']['bias'], params['Dense_0']['bias'])
  assert float(jnp.abs(out['Dense_0']['kernel']).sum()) == 0.0


def test_output_unit_mask_removes_a_neuron():
  model, params = _model_and_params()
  gates = jax.tree.map(jnp.ones_like, hard_concrete.init_gate_logits(params, 'out_unit'))
  gates['Dense_0']['kernel'] = gates['Dense_0']['kernel'].at[3].set(0.0)
  masked_params = masking.apply_masks(params, gates)
  perturbed = jax.tree.map(lambda x: x, params)
  perturbed['Dense_0']['kernel'] = params['Dense_0']['kernel'].at[:, 3].add(5.0)
  x = jax.random.normal(jax.random.key(2), (9, 1))
  test_utils.assert_trees_all_equal(
      model.apply({'params': masked_params}, x),
      model.apply({'params': masking.apply_masks(perturbed, gates)}, x))


def test_count_params():
  _, params = _model_and_params()
  assert masking.count_params(params) == 1 * 16 + 16 + 16 * 16 + 16 + 16 + 1


def test_combine_masks_multiplies_leafwise_and_passes_none_through():
  kernel = jnp.array([[1.0, 0.0], [1.0, 1.0]])
  fixed = {'a': {'kernel': kernel, 'bias': None}, 'b': {'kernel': None}}
  gates = {'a': {'kernel': jnp.array([0.5, 0.0]), 'bias': jnp.array([0.0, 1.0])}, 'b': {'kernel': None}}
  combined = masking.combine_masks(fixed, gates)
  test_utils.assert_equal(combined['a']['kernel'], [[0.5, 0.0], [0.5, 0.0]])  # [out] gate broadcast on [in, out].
  test_utils.assert_equal(combined['a']['bias'], [0.0, 1.0])
  assert combined['b']['kernel'] is None
  assert masking.combine_masks(None, gates) is gates
  assert masking.combine_masks(fixed, None) is fixed
  assert masking.combine_masks(None, None) is None
