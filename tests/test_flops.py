"""FLOPs of masked MLPs against hand counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax import flops
from metaprune_jax.nets import conv
from metaprune_jax.nets import mlp
from tests import test_utils


def _tiny_params():
  return {'Dense_0': {'kernel': jnp.ones((1, 3)), 'bias': jnp.zeros((3,))},
          'Dense_1': {'kernel': jnp.ones((3, 2)), 'bias': jnp.zeros((2,))}}


def test_dense_and_effective_flops_match_a_hand_count():
  params = _tiny_params()
  masks = {'Dense_0': {'kernel': jnp.array([[1.0, 0.0, 1.0]]), 'bias': None},
           'Dense_1': {'kernel': jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), 'bias': None}}
  counts = flops.mlp_flops(params, masks)
  # Dense: (2*1*3 + 3) + (2*3*2 + 2) = 9 + 14. Effective: (2*2 + 3) + (2*4 + 2) = 7 + 10.
  test_utils.assert_equal(counts['dense_flops'], 23)
  test_utils.assert_equal(counts['effective_flops'], 17)
  test_utils.assert_equal(counts['kernel_weights'], 9)
  test_utils.assert_equal(counts['nonzero_kernel_weights'], 6)
  assert flops.mlp_flops(params)['effective_flops'] == 23  # No mask: effective == dense.


def test_unit_masks_broadcast_and_exact_zeros_count_as_pruned():
  params = _tiny_params()
  params['Dense_0']['kernel'] = params['Dense_0']['kernel'].at[0, 0].set(0.0)  # A weight trained to 0.
  masks = {'Dense_0': {'kernel': None, 'bias': None},
           'Dense_1': {'kernel': jnp.array([0.0, 1.0]), 'bias': None}}  # Gate per output unit.
  counts = flops.mlp_flops(params, masks)
  # Dense_0: 2 nonzero -> 2*2 + 3; Dense_1: one column of 3 -> 2*3 + 2.
  test_utils.assert_equal(counts['effective_flops'], 7 + 8)
  test_utils.assert_equal(counts['dense_flops'], 23)


def test_sinusoid_mlp_dense_flops():
  model = mlp.make_mlp((40, 40), 1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']
  counts = flops.mlp_flops(params)
  test_utils.assert_equal(counts['dense_flops'], (2 * 40 + 40) + (2 * 1600 + 40) + (2 * 40 + 1))
  test_utils.assert_equal(counts['kernel_weights'], 1680)


def test_non_dense_kernels_are_rejected_by_path():
  params = {'Conv_0': {'kernel': np.ones((3, 3, 1, 4)), 'bias': np.zeros((4,))}}
  with pytest.raises(ValueError, match='Conv_0'):
    flops.mlp_flops(params)
  with pytest.raises(ValueError, match='no Dense layer'):
    flops.mlp_flops({'w': np.ones((2, 2))})


def test_conv4_flops_counts_taps_channels_and_head():
  params = conv.init_conv4(jax.random.key(0), image_size=8, width=4, depth=2, num_classes=3)
  dense = flops.conv4_flops(params, image_size=8)
  # 8x8x(9*1*4) + 4x4x(9*4*4) multiply-adds, then a [2*2*4, 3] head with bias.
  expected = 2 * (64 * 36 + 16 * 144) + (2 * 16 * 3 + 3)
  assert dense['dense_flops'] == dense['effective_flops'] == expected
  assert dense['pruned_channels'] == 0 and dense['conv_weight_sparsity'] == 0.0
  masks = jax.tree.map(lambda _: None, params)
  masks['conv_1'] = {'kernel': jnp.array([0.0, 1.0, 1.0, 0.0])}  # Two of four filters of layer 1.
  pruned = flops.conv4_flops(params, masks, image_size=8)
  assert pruned['pruned_channels'] == 2 and pruned['channel_sparsity'] == 2 / 8
  assert pruned['dense_flops'] == expected
  assert pruned['effective_flops'] == expected - 2 * 16 * 72
  assert pruned['nonzero_conv_weights'] == 36 + 72


def _random_kernel_masks(rng, params):
  """Bernoulli masks (keep probability 0.05-0.95 per layer) on every kernel; ``None`` elsewhere."""
  def mask(path, leaf):
    if path[-1].key != 'kernel':
      return None
    return jnp.asarray(rng.random(leaf.shape) < rng.uniform(0.05, 0.95), jnp.float32)
  return jax.tree_util.tree_map_with_path(mask, params)


def _nonzero_kernels(params, masks) -> dict[str, int]:
  effective = jax.tree.map(lambda p, m: p if m is None else p * m, params, masks, is_leaf=lambda x: x is None)
  return {f'{name}/kernel': int(np.count_nonzero(layer['kernel'])) for name, layer in effective.items()
          if 'kernel' in layer}


@pytest.mark.parametrize('image_size', [13, 16])
def test_weight_costs_are_the_linear_form_of_conv4_flops(image_size):
  params = conv.init_conv4(jax.random.key(1), image_size=image_size, width=4, depth=3, num_classes=3)
  costs, fixed = flops.weight_costs(params, image_size=image_size)
  # SAME 3x3 convs keep the side, each 2x2 pool halves it (rounding down): 13 -> 6 -> 3, 16 -> 8 -> 4.
  sides = [conv.feature_size(image_size, i) for i in range(3)]
  assert costs == {'conv_0/kernel': 2 * sides[0] ** 2, 'conv_1/kernel': 2 * sides[1] ** 2,
                   'conv_2/kernel': 2 * sides[2] ** 2, 'head/kernel': 2}
  assert fixed == 3  # The head's bias adds.
  rng = np.random.default_rng(image_size)
  for _ in range(5):
    masks = _random_kernel_masks(rng, params)
    linear = fixed + sum(costs[path] * nnz for path, nnz in _nonzero_kernels(params, masks).items())
    assert flops.conv4_flops(params, masks, image_size=image_size)['effective_flops'] == linear
  dense = fixed + sum(costs[path] * int(np.size(params[path.split('/')[0]]['kernel'])) for path in costs)
  assert flops.conv4_flops(params, image_size=image_size)['dense_flops'] == dense


def test_weight_costs_of_an_mlp_and_bad_input():
  model = mlp.make_mlp((8, 8), 1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']
  costs, fixed = flops.weight_costs(params)
  assert costs == {'Dense_0/kernel': 2, 'Dense_1/kernel': 2, 'Dense_2/kernel': 2} and fixed == 8 + 8 + 1
  masks = _random_kernel_masks(np.random.default_rng(0), params)
  nnz = _nonzero_kernels(params, masks)
  assert flops.mlp_flops(params, masks)['effective_flops'] == fixed + 2 * sum(nnz.values())
  with pytest.raises(ValueError, match='image_size=None for an MLP'):
    flops.weight_costs(params, image_size=28)
