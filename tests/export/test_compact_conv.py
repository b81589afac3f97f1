"""``export.compact_conv``: the compact Conv-4 computes the masked Conv-4 (logits, prototypes, adaptation)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.export import compact_conv
from metaprune_jax.export import forward
from metaprune_jax.meta import protonet
from metaprune_jax.nets import conv


def _net(seed, *, image_size=16, width=8, depth=3, p_channel=0.5, p_weight=None):
  rng = np.random.default_rng(seed)
  params = jax.tree.map(np.asarray, conv.init_conv4(jax.random.key(seed), image_size=image_size, width=width,
                                                    depth=depth, num_classes=4))
  masks = {name: {leaf: None for leaf in value} for name, value in params.items()}
  for i in range(depth):
    params[f'norm_{i}']['offset'] = rng.normal(size=width).astype(np.float32)  # Positive and negative constants.
    if p_weight is None:
      masks[f'conv_{i}']['kernel'] = (rng.random(width) < p_channel).astype(np.float32)
    else:
      masks[f'conv_{i}']['kernel'] = (rng.random(params[f'conv_{i}']['kernel'].shape) < p_weight).astype(np.float32)
  images = jnp.asarray(rng.random((6, image_size, image_size, 1)), jnp.float32)
  return params, masks, images


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('image_size', [16, 28])
def test_channel_pruned_logits_equal_the_masked_model(seed, image_size):
  params, masks, images = _net(seed, image_size=image_size, depth=4 if image_size == 28 else 3)
  expected = conv.conv4_apply(params, images, masks, method='conv')
  for adapts in (True, False):
    compact = compact_conv.compact_conv4(params, masks, image_size=image_size, adapts=adapts)
    np.testing.assert_allclose(forward.conv4_apply(compact.params, images), expected, atol=2e-5)
    np.testing.assert_allclose(forward.conv4_apply(compact.params, images, method='patches'), expected, atol=2e-5)
  folded = compact_conv.compact_conv4(params, masks, image_size=image_size, adapts=False)
  # Closed channels went, each with its filter: conv_i is [3, 3, kept_{i-1}, kept_i].
  for i, kept in folded.kept_units.items():
    assert folded.params[i]['kernel'].shape[-1] == len(kept) <= 8
  assert any(compact_conv.BORDER_BIAS in layer for layer in folded.params.values())


def test_closed_channels_with_a_positive_constant_stay_when_the_model_adapts():
  params, masks, _ = _net(0, p_channel=1.0)
  masks['conv_1']['kernel'][[2, 5]] = 0
  params['norm_1']['offset'][2], params['norm_1']['offset'][5] = 0.7, -0.3
  compact = compact_conv.compact_conv4(params, masks, image_size=16, adapts=True)
  assert list(compact.kept_units['conv_1']) == [0, 1, 2, 3, 4, 6, 7]  # 5 is dead (relu of -0.3), 2 adapts.
  compact = compact_conv.compact_conv4(params, masks, image_size=16, adapts=False)
  assert list(compact.kept_units['conv_1']) == [0, 1, 3, 4, 6, 7]


@pytest.mark.parametrize('seed', range(3))
def test_prototype_logits_of_the_embedding_only_export_equal_the_masked_model(seed):
  params, masks, images = _net(seed, p_channel=0.4)
  labels = jnp.array([0, 1, 2, 0, 1, 2])
  embed = lambda p, x, m=None: conv.conv4_features(p, x, m, method='conv')
  expected = protonet.prototype_logits(embed(params, images, masks), labels, embed(params, images[::-1], masks))
  compact = compact_conv.compact_conv4(params, masks, image_size=16, adapts=False, embedding_only=True)
  assert 'head' not in compact.params
  features = lambda x: forward.conv4_features(compact.params, x)
  got = protonet.prototype_logits(features(images), labels, features(images[::-1]))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
  assert features(images).shape[-1] <= embed(params, images, masks).shape[-1]


@pytest.mark.parametrize('seed', range(3))
def test_unstructured_masks_keep_their_pattern_and_drop_unread_channels(seed):
  params, masks, images = _net(seed, p_weight=0.15)
  masks['conv_2']['kernel'][:, :, 3, :] = 0  # conv_1 channel 3 is read by nothing.
  expected = conv.conv4_apply(params, images, masks, method='conv')
  compact = compact_conv.compact_conv4(params, masks, image_size=16, adapts=True)
  assert 3 not in compact.kept_units['conv_1']
  np.testing.assert_allclose(forward.conv4_apply(compact.params, images), expected, atol=2e-5)
  pattern = compact.masks['conv_2']['kernel']
  assert pattern is not None and set(np.unique(pattern)) <= {0.0, 1.0}
  assert np.all(compact.params['conv_2']['kernel'][pattern == 0] == 0)


def test_border_table_reproduces_the_constant_image_convolution():
  rng = np.random.default_rng(0)
  for size in (1, 2, 3, 7):
    values = rng.random(3).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 3, 5)).astype(np.float32)
    table = compact_conv.border_table(values, kernel, size)
    full = conv.conv2d(jnp.broadcast_to(values, (1, size, size, 3)), kernel, method='conv')[0]
    np.testing.assert_allclose(forward.expand_border(jnp.asarray(table), size, size), full, atol=1e-5)


def test_every_channel_of_a_block_closed():
  params, masks, images = _net(5, p_channel=1.0)
  masks['conv_1']['kernel'][:] = 0
  expected = conv.conv4_apply(params, images, masks, method='conv')
  compact = compact_conv.compact_conv4(params, masks, image_size=16, adapts=False)
  assert compact.params['conv_1']['kernel'].shape[-1] == 0
  np.testing.assert_allclose(forward.conv4_apply(compact.params, images), expected, atol=2e-5)


def test_take_channels_cuts_a_params_shaped_tree_like_the_params():
  params, masks, _ = _net(1, p_channel=0.6)
  compact = compact_conv.compact_conv4(params, masks, image_size=16, adapts=True)
  lrs = compact_conv.take_channels(params, compact.kept_units)
  assert jax.tree.map(np.shape, lrs) == jax.tree.map(np.shape, {k: {kk: vv for kk, vv in v.items()
                                                                     if kk != compact_conv.BORDER_BIAS}
                                                                 for k, v in compact.params.items()})


def test_norm_relu_pool_equals_the_nets_block_with_negative_scales():
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.normal(size=(3, 7, 6, 5)), jnp.float32)  # Odd height: the last row is dropped, as nets.conv.
  scale = jnp.asarray([1.5, -0.7, 0.0, -2.0, 0.3], jnp.float32)
  offset = jnp.asarray(rng.normal(size=5), jnp.float32)
  expected = conv.max_pool_2x2(jax.nn.relu(conv.batch_norm(x, scale, offset)))
  np.testing.assert_allclose(forward.norm_relu_pool(x, scale, offset), expected, atol=1e-5)
