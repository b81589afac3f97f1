"""Forward passes of exported (compact) models: pure functions of the compact params, no masks.

* MLP: ``Dense_0 ... Dense_L`` of any widths (zero included: a layer whose
  every neuron was removed passes only the next layer's bias on).
* Conv-4: ``nets.conv``'s blocks plus the optional ``conv_i/border_bias`` of
  removed constant channels (``compact_conv``); ``conv4_features`` is the
  embedding, ``conv4_apply`` the logits.
* LSTM / GRU: compact params keep ``nets.rnn``'s layout, so ``nets.rnn.rnn_apply``
  runs them as they are.
"""

import jax
import jax.numpy as jnp
import numpy as np

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


def conv4_features(params: types.Params, images: jax.Array, *, method: str = 'conv') -> jax.Array:
  """``[batch, H, W, in] -> [batch, features]``: the compact Conv-4's embedding."""
  depth = compact_conv.depth_of(params)
  x = images
  for i in range(depth):
    layer = params[f'conv_{i}']
    kernel = layer['kernel']
    if kernel.shape[-1] == 0 or kernel.shape[-2] == 0:  # Every channel removed: zero-size arrays.
      x = jnp.zeros(x.shape[:-1] + (kernel.shape[-1],), x.dtype)
    else:
      x = conv.conv2d(x, kernel, method=method)
    if compact_conv.BORDER_BIAS in layer:
      x = x + expand_border(layer[compact_conv.BORDER_BIAS], x.shape[1], x.shape[2])
    x = conv.batch_norm(x, params[f'norm_{i}']['scale'], params[f'norm_{i}']['offset'])
    x = conv.max_pool_2x2(jax.nn.relu(x))
  return x.reshape(x.shape[0], -1)


def conv4_apply(params: types.Params, images: jax.Array, *, method: str = 'conv') -> jax.Array:
  """``[batch, H, W, in] -> [batch, classes]`` logits of the compact Conv-4."""
  if 'head' not in params:
    raise ValueError('these compact params have no head (exported with embedding_only); use conv4_features.')
  return conv4_features(params, images, method=method) @ params['head']['kernel'] + params['head']['bias']
