"""Forward passes of exported (compact) models: pure functions of the compact params, no masks.

* MLP: ``Dense_0 ... Dense_L`` of any widths (zero included: a layer whose
  every neuron was removed passes only the next layer's bias on).
* Conv-4: ``nets.conv``'s blocks plus the optional ``conv_i/border_bias`` of
  removed constant channels (``compact_conv``), with the 2x2 max-pool taken
  before the batch-norm affine map (``norm_relu_pool``); ``conv4_features`` is
  the embedding, ``conv4_apply`` the logits. Both take ``nets.conv``'s optional
  ``reference`` batch (inductive batch norm: statistics of the reference rows).
* LSTM / GRU: compact params keep ``nets.rnn``'s layout, so ``nets.rnn.rnn_apply``
  runs them as they are.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from metaprune_jax import types
from metaprune_jax.export import compact_conv
from metaprune_jax.nets import conv
from metaprune_jax.nets import mlp


def mlp_apply(params: types.Params, inputs: jax.Array, *, activation: str = 'relu') -> jax.Array:
  """``[batch, in] -> [batch, out]`` through ``Dense_0 ... Dense_L`` (the last without activation)."""
  act = mlp.ACTIVATIONS[activation]
  num_layers = len(params)
  x = inputs
  for i in range(num_layers):
    layer = params[f'Dense_{i}']
    x = x @ layer['kernel'] + layer['bias']
    if i < num_layers - 1:
      x = act(x)
  return x


def border_rows(size: int) -> np.ndarray:
  """For each of ``size`` rows, its row of a border table: 0 first, the middle one, the last (static)."""
  positions = compact_conv.border_positions(size)
  index = np.full(size, min(1, len(positions) - 1))
  index[0], index[-1] = 0, len(positions) - 1
  return index


def expand_border(table: jax.Array, height: int, width: int) -> jax.Array:
  """``[rows, cols, out] -> [height, width, out]``: each pixel takes its border class's entry."""
  return table[border_rows(height)][:, border_rows(width)]


def norm_relu_pool(x: jax.Array, scale: jax.Array, offset: jax.Array,
                   reference: jax.Array | None = None) -> jax.Array:
  """``max_pool_2x2(relu(batch_norm(x, ..., reference)))``, pooling first: ``[b, H, W, C] -> [b, H//2, W//2, C]``.

  Batch norm is a per-channel affine map ``a * x + c`` (``a = scale / std``) once
  the statistics are taken over the full map, and ReLU is non-decreasing, so the
  2x2 max of the result is the map of the window's max where ``a >= 0`` and of
  its min where ``a < 0``. Normalising a quarter of the values makes the block's
  element-wise work about 3x cheaper on the CPU (``benchmarks/export_speed.py``);
  the values equal ``nets.conv``'s to float rounding. The statistics are those
  of ``reference`` (``[n_ref, H, W, C]`` activations), or of ``x`` when it is None.
  """
  stats = x if reference is None else reference
  mean = jnp.mean(stats, axis=(0, 1, 2))
  variance = jnp.mean(jnp.square(stats - mean), axis=(0, 1, 2))
  slope = lax.rsqrt(variance + conv.BATCH_NORM_EPSILON) * scale
  batch, height, width, channels = x.shape
  h2, w2 = height // 2, width // 2
  x = x[:, :2 * h2, :2 * w2, :].reshape(batch, h2, 2, w2, 2, channels)
  corners = (x[:, :, 0, :, 0], x[:, :, 0, :, 1], x[:, :, 1, :, 0], x[:, :, 1, :, 1])
  high = jnp.maximum(jnp.maximum(corners[0], corners[1]), jnp.maximum(corners[2], corners[3]))
  low = jnp.minimum(jnp.minimum(corners[0], corners[1]), jnp.minimum(corners[2], corners[3]))
  return jax.nn.relu((jnp.where(slope >= 0, high, low) - mean) * slope + offset)


def conv4_features(params: types.Params, images: jax.Array, *, method: str = 'conv',
                   reference: jax.Array | None = None) -> jax.Array:
  """``[batch, H, W, in] -> [batch, features]``: the compact Conv-4's embedding.

  ``reference`` (``[n_ref, H, W, in]``, e.g. the support images, or None): the
  images whose statistics every batch norm uses (``nets.conv.conv4_features``).
  """
  depth = compact_conv.depth_of(params)
  num_reference = 0 if reference is None else reference.shape[0]
  x = images if reference is None else jnp.concatenate([reference, images], axis=0)
  for i in range(depth):
    layer = params[f'conv_{i}']
    kernel = layer['kernel']
    if kernel.shape[-1] == 0 or kernel.shape[-2] == 0:  # Every channel removed: zero-size arrays.
      x = jnp.zeros(x.shape[:-1] + (kernel.shape[-1],), x.dtype)
    else:
      x = conv.conv2d(x, kernel, method=method)
    if compact_conv.BORDER_BIAS in layer:
      x = x + expand_border(layer[compact_conv.BORDER_BIAS], x.shape[1], x.shape[2])
    x = norm_relu_pool(x, params[f'norm_{i}']['scale'], params[f'norm_{i}']['offset'],
                       None if reference is None else x[:num_reference])
  if reference is not None:
    x = x[num_reference:]
  return x.reshape(x.shape[0], -1)


def conv4_apply(params: types.Params, images: jax.Array, *, method: str = 'conv',
                reference: jax.Array | None = None) -> jax.Array:
  """``[batch, H, W, in] -> [batch, classes]`` logits of the compact Conv-4 (``reference``: ``conv4_features``)."""
  if 'head' not in params:
    raise ValueError('these compact params have no head (exported with embedding_only); use conv4_features.')
  features = conv4_features(params, images, method=method, reference=reference)
  return features @ params['head']['kernel'] + params['head']['bias']
