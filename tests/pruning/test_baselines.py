"""The baseline mask makers: exact sparsity, the structure of ``ones_masks``, whole units for filter masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.masks import sparsity
from metaprune_jax.nets import conv
from metaprune_jax.nets import mlp
from metaprune_jax.pruning import baselines
from tests import test_utils


def _mlp_params():
  model = mlp.make_mlp((8, 8), 1, 'relu')
  return model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']


@pytest.mark.parametrize('make', [
    lambda p: baselines.magnitude_masks(p, 0.75),
    lambda p: baselines.random_masks(jax.random.key(1), p, 0.75),
    lambda p: baselines.snip_masks(p, lambda q: sum(jnp.sum(x ** 2) for x in jax.tree.leaves(q)), 0.75),
])
def test_unstructured_makers_prune_exactly_and_mirror_ones_masks(make):
  params = _mlp_params()
  masks = make(params)
  assert jax.tree.structure(masks) == jax.tree.structure(baselines.ones_masks(params))
  total = sum(m.size for m in jax.tree.leaves(masks))
  zeros = sum(int(jnp.sum(m == 0)) for m in jax.tree.leaves(masks))
  assert zeros == int(np.floor(0.75 * total + 0.5))


def test_filter_masks_remove_whole_units_by_l1_norm_and_keep_the_head():
  params = _mlp_params()
  # Make unit 3 of the first layer the weakest and unit 5 the strongest.
  kernel = params['Dense_0']['kernel'].at[:, 3].set(1e-3).at[:, 5].set(10.0)
  params = {**params, 'Dense_0': {**params['Dense_0'], 'kernel': kernel}}
  masks = baselines.filter_masks(params, 0.5, exclude=('Dense_2',))
  assert jax.tree.structure(masks) == jax.tree.structure(baselines.ones_masks(params))
  for name in ('Dense_0', 'Dense_1'):
    m = np.asarray(masks[name]['kernel'])
    per_unit = m.max(axis=0)
    test_utils.assert_equal(m, np.broadcast_to(per_unit, m.shape))  # Whole columns.
    assert per_unit.sum() == 4  # floor(0.5 * 8 + 0.5) of 8 units removed.
  assert masks['Dense_0']['kernel'][0, 3] == 0 and masks['Dense_0']['kernel'][0, 5] == 1
  test_utils.assert_equal(masks['Dense_2']['kernel'], np.ones((8, 1)))
  # Half of the units of a layer: 4 of 8 columns of Dense_0 [1, 8] and Dense_1 [8, 8] (4 + 32 zeros), the head
  # [8, 1] all ones: 36 of 80 kernel entries.
  assert float(sparsity.mask_sparsity(masks)) == np.float32(36 / 80)


def test_filter_masks_prune_conv_filters():
  params = conv.init_conv4(jax.random.key(2), image_size=16, width=8, depth=2, num_classes=3)
  masks = baselines.filter_masks(params, 0.25, exclude=('head',))
  for name in ('conv_0', 'conv_1'):
    m = np.asarray(masks[name]['kernel'])  # [3, 3, in, out]
    kept = m.reshape(-1, m.shape[-1]).max(axis=0)
    assert kept.sum() == 6  # floor(0.25 * 8 + 0.5) = 2 of 8 filters removed.
    test_utils.assert_equal(m, np.broadcast_to(kept, m.shape))
  test_utils.assert_equal(masks['head']['kernel'], np.ones_like(masks['head']['kernel']))
