"""Conv-4: the few-shot vision backbone of MAML and prototypical networks.

``depth`` blocks (4 by default) of [3x3 conv (``width`` channels, SAME padding),
batch norm, ReLU, 2x2 max-pool], then a linear head to ``num_classes``. For
28x28 Omniglot images the spatial size goes 28 -> 14 -> 7 -> 3 -> 1, so the
embedding is ``width`` features.

Parameters are a nested dict (masks mirror it, see ``metaprune_jax.masks.masking``)::

  {'conv_0': {'kernel': [3, 3, in_channels, width]},   # HWIO
   'norm_0': {'scale': [width], 'offset': [width]},
   ...
   'conv_{depth-1}': ..., 'norm_{depth-1}': ...,
   'head': {'kernel': [features, num_classes], 'bias': [num_classes]}}

The convolutions have no bias: batch norm subtracts the per-channel mean right
after, which cancels any bias exactly.

Batch norm, the MAML way: every call normalises each channel with the mean and
(biased) variance of the batch it is given, over ``[batch, height, width]``;
the learnable ``scale`` / ``offset`` follow. There are no running averages and
no train/eval mode. Under ``vmap`` over tasks each task is normalised with its
own batch, so support and query sets of a task (separate calls) use their own
statistics, as in the reference MAML implementation (transductive at test time:
a query image's output depends on the other query images).

Given a ``reference`` batch (``[n_ref, H, W, C]``, a task's support images),
``conv4_apply`` / ``conv4_features`` are inductive instead: the net runs on
``concatenate([reference, images])``, every batch-norm layer takes its
statistics from the reference rows only, and only the rows of ``images`` are
returned, so each image's output depends on the reference and on itself alone
(``BN_MODES``). ``reference=None`` is the per-batch computation above.

Channel pruning: a ``[width]`` mask on ``conv_i/kernel`` broadcasts onto the
``[3, 3, in, width]`` kernel and zeroes that filter; its pre-BN output is then
all zeros, so batch norm outputs the constant ``offset`` for it and the net no
longer depends on the filter's weights. To remove the channel entirely, mask
``norm_i/scale`` and ``norm_i/offset`` with the same ``[width]`` mask.

Formulations of the convolution (``method``):

* ``'conv'``: ``lax.conv_general_dilated``. Unbatched weights are fast
  everywhere, but ``vmap`` over per-task weights (MAML's adapted copies) lowers
  to a grouped convolution that XLA:CPU runs very slowly.
* ``'patches'``: im2col from 9 shifted slices of the padded input, then one
  matmul ``[..., 9 * in] x [9 * in, out]``. ``vmap`` over per-task weights turns
  it into a batched matmul (``'tbhwk,tko->tbhwo'``), which XLA:CPU runs fast;
  the gradients are matmuls plus pads / adds.
* ``'auto'``: ``'patches'`` on every backend (the choice does not read the
  backend), the formulation for per-task weights, which ``'conv'`` would turn
  into a grouped convolution. The launcher refines it
  (``experiments.problems.conv_method``): where every task of a vmapped call
  uses the same weights (dense prototypical networks, for example) the
  convolution stays unbatched and the launcher picks ``'conv'``.
  ``benchmarks/omniglot_step_speed.py`` times either formulation.

Both formulations compute the same function (up to float rounding) with the
same parameters; see ``benchmarks/conv_formulations.py`` for their speed.
Max-pooling is a reshape followed by pairwise ``jnp.maximum`` of the four
window entries. Not ``lax.reduce_window`` (its gradient is much slower on
XLA:CPU), and not ``jnp.max`` over the window axes: its gradient marks the
arg-max by comparing the input with the recomputed max, and under ``jit`` +
``vmap`` of second-order MAML XLA may compute the two with different rounding,
which silently gave wrong meta-gradients (see the tests).
"""

import jax
import jax.numpy as jnp
from jax import lax

from metaprune_jax import types
from metaprune_jax.masks import masking

METHODS = ('auto', 'conv', 'patches')
BATCH_NORM_EPSILON = 1e-5
# How query images are normalised: 'transductive' (with their own batch's statistics) or 'inductive' (with a
# reference batch's, the support set's: a query image's output does not depend on the other query images).
BN_MODES = ('transductive', 'inductive')


def resolve_method(method: str) -> str:
  """Returns ``'conv'`` or ``'patches'``; ``'auto'`` is ``'patches'`` (module docstring).

  Raises:
    ValueError: if ``method`` is not one of ``METHODS``.
  """
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}, got {method!r}.')
  return 'patches' if method == 'auto' else method


def feature_size(image_size: int, depth: int) -> int:
  """Spatial side length after ``depth`` blocks (each halves it, rounding down)."""
  size = image_size
  for _ in range(depth):
    size //= 2
  return size


def init_conv4(key: types.PRNGKey, *, image_size: int = 28,
               in_channels: int = 1, width: int = 64, depth: int = 4,
               num_classes: int = 5) -> types.Params:
  """Initialises Conv-4 parameters.

  Kernels use He-normal initialisation (fan-in, for ReLU), batch-norm scales
  are ones and offsets zeros, the head is Glorot-uniform with a zero bias.

  Args:
    key: PRNG key.
    image_size: height (= width) of the square input images, e.g. 28.
    in_channels: channels of the input images, e.g. 1 for Omniglot.
    width: channels of every conv layer, e.g. 64.
    depth: number of conv blocks, e.g. 4.
    num_classes: outputs of the linear head (ways).

  Returns:
    The parameter dict described in the module docstring.

  Raises:
    ValueError: for non-positive sizes, or a ``depth`` that pools the image
      down to nothing.
  """
  for name, value in (('image_size', image_size), ('in_channels', in_channels),
                      ('width', width), ('depth', depth),
                      ('num_classes', num_classes)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'{name} must be a positive int, got {value!r}.')
  side = feature_size(image_size, depth)
  if side < 1:
    raise ValueError(
        f'depth={depth} max-pools image_size={image_size} down to 0 pixels; '
        f'use depth <= {image_size.bit_length() - 1} or larger images.')
  keys = jax.random.split(key, depth + 1)
  conv_init = jax.nn.initializers.he_normal(in_axis=(0, 1, 2), out_axis=3)
  params = {}
  channels = in_channels
  for i in range(depth):
    params[f'conv_{i}'] = {
        'kernel': conv_init(keys[i], (3, 3, channels, width), jnp.float32)}
    params[f'norm_{i}'] = {'scale': jnp.ones((width,), jnp.float32),
                           'offset': jnp.zeros((width,), jnp.float32)}
    channels = width
  features = side * side * width
  params['head'] = {
      'kernel': jax.nn.initializers.glorot_uniform()(
          keys[depth], (features, num_classes), jnp.float32),
      'bias': jnp.zeros((num_classes,), jnp.float32)}
  return params


def conv2d(images: types.Array, kernel: types.Array, *,
           method: str = 'auto') -> types.Array:
  """Stride-1 SAME convolution, NHWC x HWIO -> NHWC.

  Args:
    images: ``[batch, height, width, in]``.
    kernel: ``[kh, kw, in, out]``.
    method: ``'auto'``, ``'conv'`` or ``'patches'`` (module docstring).

  Returns:
    ``[batch, height, width, out]``.
  """
  method = resolve_method(method)
  if method == 'conv':
    return lax.conv_general_dilated(
        images, kernel, window_strides=(1, 1), padding='SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  kh, kw, cin, cout = kernel.shape
  _, height, width, _ = images.shape
  # SAME padding for stride 1 (the extra pixel of an even kernel goes after).
  padded = jnp.pad(images, ((0, 0), ((kh - 1) // 2, kh // 2),
                            ((kw - 1) // 2, kw // 2), (0, 0)))
  # Patch features in (kh, kw, in) order, matching the row-major HWIO reshape.
  patches = jnp.concatenate(
      [padded[:, i:i + height, j:j + width, :]
       for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.einsum('bhwk,ko->bhwo', patches,
                    kernel.reshape(kh * kw * cin, cout))


def batch_norm(x: types.Array, scale: types.Array, offset: types.Array,
               reference: types.Array | None = None) -> types.Array:
  """Normalises ``x`` ``[batch, height, width, channels]`` with batch statistics.

  Mean and biased variance per channel over ``[batch, height, width]`` of
  ``reference`` (or of ``x`` itself when it is None); then ``* scale + offset``
  (both ``[channels]``). No running averages.

  Args:
    x: ``[batch, height, width, channels]`` activations to normalise.
    scale: ``[channels]``.
    offset: ``[channels]``.
    reference: None, or ``[n_ref, height, width, channels]`` activations
      whose statistics normalise ``x`` (for example the support rows of ``x``).

  Returns:
    ``[batch, height, width, channels]``.
  """
  if reference is None:
    mean = jnp.mean(x, axis=(0, 1, 2))
    centered = x - mean
    variance = jnp.mean(jnp.square(centered), axis=(0, 1, 2))
    return centered * (lax.rsqrt(variance + BATCH_NORM_EPSILON) * scale) + offset
  mean = jnp.mean(reference, axis=(0, 1, 2))
  variance = jnp.mean(jnp.square(reference - mean), axis=(0, 1, 2))
  return (x - mean) * (lax.rsqrt(variance + BATCH_NORM_EPSILON) * scale) + offset


def max_pool_2x2(x: types.Array) -> types.Array:
  """2x2 stride-2 max-pool of ``[batch, H, W, C]`` by reshape; odd edges are dropped.

  Pairwise ``jnp.maximum`` keeps the gradient exact under jit (module docstring).
  """
  batch, height, width, channels = x.shape
  h2, w2 = height // 2, width // 2
  x = x[:, :2 * h2, :2 * w2, :].reshape(batch, h2, 2, w2, 2, channels)
  return jnp.maximum(
      jnp.maximum(x[:, :, 0, :, 0], x[:, :, 0, :, 1]),
      jnp.maximum(x[:, :, 1, :, 0], x[:, :, 1, :, 1]))


def _depth(params: types.Params) -> int:
  depth = 0
  while f'conv_{depth}' in params:
    depth += 1
  if depth == 0:
    raise ValueError('params must hold conv_0 ... conv_{depth-1} and norm_* '
                     f'entries, as built by init_conv4; got keys {sorted(params)}.')
  return depth


def conv4_features(params: types.Params, images: types.Array,
                   masks: types.Masks | None = None, *,
                   method: str = 'auto',
                   reference: types.Array | None = None) -> types.Array:
  """The embedding before the head (for prototypical networks).

  Args:
    params: Conv-4 parameters from ``init_conv4``.
    images: ``[batch, height, width, in_channels]``, e.g. ``[25, 28, 28, 1]``.
    masks: ``None`` or a tree mirroring ``params`` (``None`` leaves stay dense).
    method: convolution formulation, ``'auto'``, ``'conv'`` or ``'patches'``.
    reference: None (every batch-norm layer uses the statistics of
      ``images``), or ``[n_ref, height, width, in_channels]`` images whose
      statistics every batch-norm layer uses instead (inductive, module
      docstring), e.g. a task's support set.

  Returns:
    ``[batch, features]`` with ``features = side * side * width``, e.g.
    ``[25, 64]`` for 28x28 images and depth 4.

  Raises:
    ValueError: for images (or a reference) that are not ``[batch, H, W,
      in_channels]`` or an unknown ``method``.
  """
  return _embed(masking.apply_masks(params, masks), images, resolve_method(method), reference)


def _check_images(images: types.Array, in_channels: int, name: str) -> None:
  if images.ndim != 4 or images.shape[-1] != in_channels:
    raise ValueError(
        f'{name} must be [batch, height, width, {in_channels}] (NHWC, matching '
        f'conv_0/kernel), got shape {images.shape}.')


def _embed(params: types.Params, images: types.Array, method: str,
           reference: types.Array | None = None) -> types.Array:
  """``conv4_features`` of already-masked params."""
  depth = _depth(params)
  in_channels = params['conv_0']['kernel'].shape[2]
  _check_images(images, in_channels, 'images')
  num_reference = 0
  x = images
  if reference is not None:
    _check_images(reference, in_channels, 'reference')
    if reference.shape[1:] != images.shape[1:]:
      raise ValueError(f'reference images {reference.shape[1:]} and images {images.shape[1:]} differ in size; '
                       'the net runs on both in one batch.')
    num_reference = reference.shape[0]
    x = jnp.concatenate([reference, images], axis=0)
  for i in range(depth):
    x = conv2d(x, params[f'conv_{i}']['kernel'], method=method)
    x = batch_norm(x, params[f'norm_{i}']['scale'], params[f'norm_{i}']['offset'],
                   None if reference is None else x[:num_reference])
    x = max_pool_2x2(jax.nn.relu(x))
  if reference is not None:
    x = x[num_reference:]
  return x.reshape(x.shape[0], -1)


def conv4_apply(params: types.Params, images: types.Array,
                masks: types.Masks | None = None, *,
                method: str = 'auto',
                reference: types.Array | None = None) -> types.Array:
  """Conv-4 logits.

  Works under ``jax.vmap(..., in_axes=(0, 0, None))`` over per-task params and
  images (``method='patches'`` keeps that fast on CPU).

  Args:
    params: Conv-4 parameters from ``init_conv4``.
    images: ``[batch, height, width, in_channels]``, e.g. ``[5, 28, 28, 1]``.
    masks: ``None`` or a tree mirroring ``params`` (``None`` leaves stay dense).
    method: convolution formulation, ``'auto'``, ``'conv'`` or ``'patches'``.
    reference: None, or ``[n_ref, height, width, in_channels]`` images whose
      batch-norm statistics normalise ``images`` (``conv4_features``).

  Returns:
    ``[batch, num_classes]`` logits.

  Raises:
    ValueError: for badly shaped images, an unknown ``method``, or an embedding
      size that does not match the head (images of another size than at init).
  """
  params = masking.apply_masks(params, masks)
  features = _embed(params, images, resolve_method(method), reference)
  if 'head' not in params:
    raise ValueError("params has no 'head' entry; build them with init_conv4 "
                     '(or call conv4_features for the embedding).')
  head = params['head']
  if features.shape[-1] != head['kernel'].shape[0]:
    raise ValueError(
        f'the conv blocks give {features.shape[-1]} features but head/kernel '
        f'expects {head["kernel"].shape[0]}; pass images of the image_size '
        'used in init_conv4.')
  return features @ head['kernel'] + head['bias']
