"""Tests for metaprune_jax.nets.conv (Conv-4)."""

import functools

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from metaprune_jax.nets import conv
from tests import test_utils

# Tiny nets: 8x8 images, depth 2 (8 -> 4 -> 2), width 4.
_SMALL = dict(image_size=8, in_channels=2, width=4, depth=2, num_classes=3)


def _small_params(seed=0):
  return conv.init_conv4(jax.random.key(seed), **_SMALL)


def _images(seed, batch=3, size=8, channels=2, leading=()):
  return jax.random.normal(jax.random.key(seed),
                           leading + (batch, size, size, channels))


def _lax_conv(x, kernel):
  return lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def test_patches_conv2d_equals_lax_conv_values_and_gradients():
  k_x, k_w, k_g = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k_x, (2, 5, 6, 3))
  kernel = jax.random.normal(k_w, (3, 3, 3, 4))
  probe = jax.random.normal(k_g, (2, 5, 6, 4))

  def loss(x, kernel, fn):
    return jnp.sum(jnp.sin(fn(x, kernel)) * probe)

  patches = lambda x, k: conv.conv2d(x, k, method='patches')
  test_utils.assert_close(patches(x, kernel), _lax_conv(x, kernel),
                          rtol=1e-5, atol=1e-5)
  grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
  test_utils.assert_trees_all_close(grad(x, kernel, patches),
                                    grad(x, kernel, _lax_conv), rtol=1e-4, atol=1e-5)


def test_conv2d_methods_agree_under_vmap_over_per_task_kernels():
  k_x, k_w = jax.random.split(jax.random.key(1))
  x = jax.random.normal(k_x, (3, 2, 6, 6, 2))        # [tasks, batch, H, W, in]
  kernels = jax.random.normal(k_w, (3, 3, 3, 2, 5))  # [tasks, 3, 3, in, out]

  def run(method):
    fn = lambda x, k: conv.conv2d(x, k, method=method)
    return jax.vmap(fn, in_axes=(0, 0))(x, kernels)

  test_utils.assert_close(run('patches'), run('conv'), rtol=1e-5, atol=1e-5)


def test_second_order_maml_gradient_patches_vmap_matches_conv_task_loop():
  # Jitted, vmapped second-order MAML with the patches formulation against a
  # Python loop over tasks with lax.conv. (This caught a wrong max-pool gradient:
  # jnp.max's tie mask compares against a recomputed max under jit + vmap.)
  params = _small_params()
  support, query = _images(2, leading=(2,)), _images(3, leading=(2,))
  labels = jnp.array([0, 1, 2])

  def meta_loss(params, method):
    def task_loss(params, support, query):
      def ce(p, x):
        logits = conv.conv4_apply(p, x, method=method)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(3), labels])
      grads = jax.grad(ce)(params, support)
      adapted = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
      return ce(adapted, query)
    if method == 'conv':
      return jnp.mean(jnp.stack([task_loss(params, support[t], query[t])
                                 for t in range(support.shape[0])]))
    return jnp.mean(jax.vmap(task_loss, in_axes=(None, 0, 0))(params, support, query))

  value_and_grad = jax.jit(jax.value_and_grad(meta_loss), static_argnames='method')
  loss_p, grads_p = value_and_grad(params, method='patches')
  loss_c, grads_c = value_and_grad(params, method='conv')
  test_utils.assert_close(loss_p, loss_c, rtol=1e-5, atol=1e-5)
  test_utils.assert_trees_all_close(grads_p, grads_c, rtol=1e-3, atol=1e-5)
  assert float(jnp.abs(grads_p['conv_0']['kernel']).max()) > 0


def test_conv4_apply_vmaps_over_per_task_params():
  keys = jax.random.split(jax.random.key(4), 2)
  task_params = jax.vmap(lambda k: conv.init_conv4(k, **_SMALL), in_axes=(0,))(keys)
  images = _images(5, leading=(2,))
  apply_conv = jax.jit(lambda p, x: conv.conv4_apply(p, x, method='conv'))
  batched = jax.jit(jax.vmap(
      lambda p, x, m: conv.conv4_apply(p, x, m, method='patches'),
      in_axes=(0, 0, None)))(task_params, images, None)
  assert batched.shape == (2, 3, 3)
  for t in range(2):
    single = apply_conv(jax.tree.map(lambda a, t=t: a[t], task_params), images[t])
    test_utils.assert_close(batched[t], single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('method', ['conv', 'patches'])
def test_all_ones_mask_equals_dense_exactly(method):
  params, images = _small_params(), _images(6)
  ones = jax.tree.map(jnp.ones_like, params)
  test_utils.assert_equal(conv.conv4_apply(params, images, ones, method=method),
                          conv.conv4_apply(params, images, method=method))


def test_zeroed_channel_has_no_pre_bn_output_and_no_influence():
  params, images = _small_params(), _images(7)
  channel = 2
  channel_mask = jnp.ones((_SMALL['width'],)).at[channel].set(0.0)
  masks = jax.tree.map(lambda _: None, params)
  masks['conv_1']['kernel'] = channel_mask  # [out] broadcasts onto [3, 3, in, out]

  hidden = conv.max_pool_2x2(jax.nn.relu(conv.batch_norm(
      conv.conv2d(images, params['conv_0']['kernel']),
      params['norm_0']['scale'], params['norm_0']['offset'])))
  pre_bn = conv.conv2d(hidden, params['conv_1']['kernel'] * channel_mask)
  test_utils.assert_equal(pre_bn[..., channel], jnp.zeros_like(pre_bn[..., channel]))
  assert float(jnp.abs(pre_bn[..., channel - 1]).max()) > 0

  perturbed = jax.tree.map(lambda a: a, params)
  perturbed['conv_1'] = {'kernel': params['conv_1']['kernel'].at[..., channel].add(3.0)}
  apply = jax.jit(conv.conv4_apply)
  test_utils.assert_equal(apply(perturbed, images, masks), apply(params, images, masks))
  # Without the mask the same perturbation does change the logits.
  assert not np.allclose(apply(perturbed, images), apply(params, images))
  grads = jax.jit(jax.grad(
      lambda p: jnp.sum(conv.conv4_apply(p, images, masks) ** 2)))(params)
  test_utils.assert_equal(grads['conv_1']['kernel'][..., channel],
                          jnp.zeros((3, 3, _SMALL['width'])))


def test_batch_norm_uses_current_batch_statistics():
  x = jax.random.normal(jax.random.key(8), (4, 3, 3, 5)) * 3.0 + 1.0
  scale = jnp.array([1.0, 2.0, 0.5, 1.0, 3.0])
  offset = jnp.array([0.0, -1.0, 1.0, 2.0, 0.5])
  out = conv.batch_norm(x, scale, offset)
  test_utils.assert_close(jnp.mean(out, axis=(0, 1, 2)), offset, atol=1e-5)
  test_utils.assert_close(jnp.std(out, axis=(0, 1, 2)), scale, rtol=1e-4)
  # A per-channel affine shift of the batch (positive gain) changes nothing.
  gain, shift = jnp.array([2.0, 0.5, 7.0, 1.0, 3.0]), jnp.arange(5.0)
  test_utils.assert_close(conv.batch_norm(x * gain + shift, scale, offset), out,
                          rtol=1e-4, atol=1e-4)


def test_logits_depend_on_the_rest_of_the_batch():
  params, images = _small_params(), _images(9)
  changed = images.at[1:].multiply(5.0)
  logits = conv.conv4_apply(params, images)
  assert not np.allclose(conv.conv4_apply(params, changed)[0], logits[0])


def _per_batch_logits(params, images):
  """Conv-4 logits as written before the ``reference`` argument existed (own-batch statistics)."""
  x = images
  for i in range(_SMALL['depth']):
    x = conv.conv2d(x, params[f'conv_{i}']['kernel'], method='conv')
    mean = jnp.mean(x, axis=(0, 1, 2))
    centered = x - mean
    variance = jnp.mean(jnp.square(centered), axis=(0, 1, 2))
    x = centered * (lax.rsqrt(variance + conv.BATCH_NORM_EPSILON) * params[f'norm_{i}']['scale']) + params[
        f'norm_{i}']['offset']
    x = conv.max_pool_2x2(jax.nn.relu(x))
  return x.reshape(x.shape[0], -1) @ params['head']['kernel'] + params['head']['bias']


@pytest.mark.parametrize('method', ['conv', 'patches'])
def test_inductive_logits_of_a_query_image_ignore_the_other_query_images(method):
  params, support, query = _small_params(), _images(20), _images(21, batch=4)
  changed = query.at[0].set(_images(22, batch=1)[0])
  apply = jax.jit(functools.partial(conv.conv4_apply, method=method))
  inductive = apply(params, query, reference=support)
  changed_inductive = apply(params, changed, reference=support)
  assert inductive.shape == (4, _SMALL['num_classes'])
  test_utils.assert_equal(changed_inductive[1:], inductive[1:])
  assert not np.allclose(changed_inductive[0], inductive[0])
  # Transductive (no reference): the same change moves every query image's logits.
  transductive, changed_transductive = apply(params, query), apply(params, changed)
  assert not np.allclose(changed_transductive[1:], transductive[1:])


def test_inductive_embedding_is_the_embedding_of_reference_and_images_with_reference_statistics():
  params, support, query = _small_params(), _images(23), _images(24, batch=2)
  features = conv.conv4_features(params, query, reference=support, method='conv')
  # The batch itself as the reference is the per-batch computation.
  test_utils.assert_close(conv.conv4_features(params, query, reference=query, method='conv'),
                          conv.conv4_features(params, query, method='conv'), rtol=1e-5, atol=1e-5)
  # The support's own embedding does not depend on the query images.
  test_utils.assert_close(conv.conv4_features(params, support, reference=support, method='conv'),
                          conv.conv4_features(params, support, method='conv'), rtol=1e-5, atol=1e-5)
  assert features.shape == (2, 4 * _SMALL['width'])


@pytest.mark.parametrize('jit', [False, True])
def test_no_reference_is_the_per_batch_computation_exactly(jit):
  params, images = _small_params(), _images(25, batch=5)
  apply = lambda p, x: conv.conv4_apply(p, x, method='conv', reference=None)  # pylint: disable=unnecessary-lambda-assignment
  old = _per_batch_logits
  if jit:
    apply, old = jax.jit(apply), jax.jit(old)
  test_utils.assert_equal(apply(params, images), old(params, images))


def test_batch_norm_with_a_reference_matches_numpy():
  x = np.asarray(jax.random.normal(jax.random.key(26), (3, 2, 2, 4)), np.float64)
  reference = np.asarray(jax.random.normal(jax.random.key(27), (5, 2, 2, 4)), np.float64) * 2.0 + 0.5
  scale, offset = np.array([1.0, 2.0, 0.5, 3.0]), np.array([0.0, -1.0, 1.0, 0.25])
  mean = reference.mean(axis=(0, 1, 2))
  variance = ((reference - mean) ** 2).mean(axis=(0, 1, 2))
  expected = (x - mean) / np.sqrt(variance + conv.BATCH_NORM_EPSILON) * scale + offset
  out = conv.batch_norm(jnp.asarray(x, jnp.float32), jnp.asarray(scale, jnp.float32),
                        jnp.asarray(offset, jnp.float32), jnp.asarray(reference, jnp.float32))
  test_utils.assert_close(out, expected, rtol=1e-5, atol=1e-5)
  # x's own statistics play no part: only the reference's.
  test_utils.assert_close(conv.batch_norm(jnp.asarray(x[:1], jnp.float32), jnp.asarray(scale, jnp.float32),
                                          jnp.asarray(offset, jnp.float32), jnp.asarray(reference, jnp.float32)),
                          expected[:1], rtol=1e-5, atol=1e-5)


def test_inductive_apply_vmaps_over_per_task_params_and_references():
  keys = jax.random.split(jax.random.key(28), 2)
  task_params = jax.vmap(lambda k: conv.init_conv4(k, **_SMALL), in_axes=(0,))(keys)
  support, query = _images(29, leading=(2,)), _images(30, batch=2, leading=(2,))
  batched = jax.jit(jax.vmap(lambda p, x, r: conv.conv4_apply(p, x, method='patches', reference=r),
                             in_axes=(0, 0, 0)))(task_params, query, support)
  for t in range(2):
    single = conv.conv4_apply(jax.tree.map(lambda a, t=t: a[t], task_params), query[t], method='conv',
                              reference=support[t])
    test_utils.assert_close(batched[t], single, rtol=1e-5, atol=1e-5)


def test_a_reference_of_another_image_size_is_refused():
  params = _small_params()
  with pytest.raises(ValueError, match='reference'):
    conv.conv4_apply(params, _images(31), reference=_images(32, size=6))
  with pytest.raises(ValueError, match='reference must be'):
    conv.conv4_apply(params, _images(31), reference=_images(32, channels=1))


@pytest.mark.parametrize('image_size,width,depth,features', [
    (28, 64, 4, 64), (28, 8, 3, 72), (16, 4, 2, 64), (9, 6, 1, 96)])
def test_output_shapes_for_width_and_depth(image_size, width, depth, features):
  params = conv.init_conv4(jax.random.key(10), image_size=image_size,
                           in_channels=1, width=width, depth=depth, num_classes=7)
  assert params['head']['kernel'].shape == (features, 7)
  assert params[f'conv_{depth - 1}']['kernel'].shape[-1] == width
  images = jnp.ones((2, image_size, image_size, 1))
  assert jax.eval_shape(conv.conv4_features, params, images).shape == (2, features)
  assert jax.eval_shape(conv.conv4_apply, params, images).shape == (2, 7)


def test_jit_equals_no_jit():
  params, images = _small_params(), _images(11)
  apply = lambda p, x: conv.conv4_apply(p, x, method='patches')
  test_utils.assert_close(jax.jit(apply)(params, images), apply(params, images),
                          rtol=1e-6, atol=1e-6)


def test_max_pool_matches_reduce_window_and_drops_odd_edge():
  x = jax.random.normal(jax.random.key(12), (2, 7, 6, 3))
  expected = lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
  test_utils.assert_equal(conv.max_pool_2x2(x), expected)


def test_auto_method_is_patches_whatever_the_backend():
  assert conv.resolve_method('auto') == 'patches'
  assert conv.resolve_method('conv') == 'conv'


def test_bad_inputs_raise_clear_errors():
  params = _small_params()
  with pytest.raises(ValueError, match='method'):
    conv.conv4_apply(params, _images(13), method='winograd')
  with pytest.raises(ValueError, match='images'):
    conv.conv4_apply(params, jnp.ones((3, 8, 8, 5)))
  with pytest.raises(ValueError, match='head'):
    conv.conv4_apply(params, jnp.ones((3, 12, 12, 2)))
  with pytest.raises(ValueError, match='depth'):
    conv.init_conv4(jax.random.key(0), image_size=8, depth=4)
  with pytest.raises(ValueError, match='width'):
    conv.init_conv4(jax.random.key(0), width=0)
