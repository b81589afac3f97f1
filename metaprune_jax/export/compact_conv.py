"""Structured removal for Conv-4 (``nets.conv``): closed and unread channels out of their layer and the next.

A channel ``c`` of block ``i`` is removed (its filter in ``conv_i``, its
``norm_i`` scale and offset, its input slice of ``conv_{i+1}`` or its rows of the
head) when

* nothing reads it: every weight from it into a kept channel of the next block
  (or into the head) is pruned; or
* it is closed: its whole filter is pruned (a closed ``out_unit`` gate), so its
  pre-norm output is exactly 0, batch norm outputs the constant ``offset_c`` and
  the block outputs ``v_c = relu(offset_c)`` everywhere — and that constant may
  go (``units.constant_removable``: without adaptation always; with it only when
  ``offset_c <= 0``, a dead channel).

Folding a removed constant channel, exact up to float rounding:

* into the next conv: with SAME zero padding the constant image's contribution
  is not constant near the borders, but for a 3x3 kernel it depends only on
  whether a pixel is in the first, a middle or the last row (and column). It is
  stored as ``conv_{i+1}/border_bias`` ``[rows, cols, out]`` (rows, cols <= 3)
  and added to the convolution's output (``forward.expand_border``);
* into the head: ``v_c`` times the sum of channel ``c``'s head rows goes into the
  head bias;
* with ``embedding_only`` (a prototypical network, whose logits are minus
  squared distances): a constant feature is the same for every image and
  cancels in every distance, so the last block's closed channels just go.

Removals repeat until nothing changes; the input channels and the classes stay.
"""

import jax
import jax.numpy as jnp
import numpy as np

from metaprune_jax.export import units
from metaprune_jax.export.compacted import Compacted
from metaprune_jax.export.compacted import pattern_or_none
from metaprune_jax.nets import conv

BORDER_BIAS = 'border_bias'


def depth_of(params) -> int:
  depth = 0
  while f'conv_{depth}' in params:
    depth += 1
  if depth == 0:
    raise ValueError(f'params must hold conv_0 ... conv_(depth-1) of nets.conv, got keys {sorted(params)}.')
  return depth


def border_positions(size: int) -> np.ndarray:
  """The representative rows (or columns) of a ``size``-pixel side: first, a middle one, last (deduplicated)."""
  return np.unique(np.array([0, min(1, size - 1), size - 1]))


def border_table(values: np.ndarray, kernel: np.ndarray, size: int) -> np.ndarray:
  """What constant input channels add to a SAME 3x3 convolution: ``[rows, cols, out]`` at ``border_positions``.

  Args:
    values: ``[n]`` the channels' constant values.
    kernel: ``[3, 3, n, out]`` the weights from those channels.
    size: the side of the (square) input image of the convolution.
  """
  image = jnp.broadcast_to(jnp.asarray(values, jnp.float32), (1, size, size, len(values)))
  full = np.asarray(conv.conv2d(image, jnp.asarray(kernel), method='conv'))[0]
  where = border_positions(size)
  return full[where][:, where].astype(np.float32)


def _filter_pattern(params, masks, name):
  return units.full_pattern(params[name]['kernel'], (masks.get(name) or {}).get('kernel'))


def compact_conv4(params, masks=None, *, image_size: int, adapts: bool = True,
                  embedding_only: bool = False) -> Compacted:
  """Removes Conv-4's closed and unread channels (module docstring).

  Args:
    params: ``nets.conv.init_conv4`` params.
    masks: None or a tree mirroring ``params`` of (deterministic) gate values
      broadcasting onto their leaves (full kernels, ``[out]`` per filter, ``[in, 1]``).
    image_size: side of the input images (the border tables depend on it).
    adapts: whether the exported model is adapted (``units`` module docstring).
    embedding_only: drop the head: the model's output is the embedding, read
      through prototype distances (module docstring).

  Returns:
    ``Compacted``; ``kept_units`` has the kept channels of each ``conv_i``. Compact
    params have the layout of ``init_conv4`` (no head with ``embedding_only``)
    plus an optional ``conv_i/border_bias``.
  """
  depth = depth_of(params)
  masks = masks or {}
  kernel = {i: units.folded(params[f'conv_{i}']['kernel'], (masks.get(f'conv_{i}') or {}).get('kernel'))
            for i in range(depth)}
  pattern = {i: _filter_pattern(params, masks, f'conv_{i}') for i in range(depth)}
  offset = {i: np.asarray(params[f'norm_{i}']['offset'], np.float32) for i in range(depth)}
  if not embedding_only:
    head_kernel = units.folded(params['head']['kernel'], (masks.get('head') or {}).get('kernel'))
    head_pattern = _filter_pattern(params, masks, 'head')
    head_bias = units.folded(params['head']['bias'], (masks.get('head') or {}).get('bias'))
    width_last = kernel[depth - 1].shape[-1]
    head_rows = head_kernel.shape[0] // width_last  # Spatial positions per channel (features are [h, w, c]).
  keep = {i: np.ones(kernel[i].shape[-1], bool) for i in range(depth)}
  sides = {i: conv.feature_size(image_size, i) for i in range(depth)}  # Input side of conv_i.
  tables = {}  # i -> [rows, cols, out_i] (original out channels) for conv_i.
  removed_constant = {i: np.zeros(kernel[i].shape[-1], bool) for i in range(depth)}
  changed = True
  while changed:
    changed = False
    for i in range(depth):
      inputs = keep[i - 1] if i > 0 else np.ones(kernel[i].shape[2], bool)
      fan_in = pattern[i][:, :, inputs].any(axis=(0, 1, 2))
      if i in tables:
        fan_in |= np.any(tables[i] != 0, axis=(0, 1))
      last = i == depth - 1
      if not last:
        fan_out = pattern[i + 1][:, :, :, keep[i + 1]].any(axis=(0, 1, 3))
      elif embedding_only:
        fan_out = np.ones_like(keep[i])
      else:
        fan_out = head_pattern.reshape(head_rows, -1, head_pattern.shape[-1]).any(axis=(0, 2))
      closed = ~fan_in & units.constant_removable(jax.nn.relu, offset[i], adapts)
      remove = keep[i] & (~fan_out | closed)
      if not remove.any():
        continue
      folding = remove & closed & fan_out & (np.maximum(offset[i], 0) != 0)
      if folding.any() and not last:
        values = np.maximum(offset[i][folding], 0)
        table = border_table(values, kernel[i + 1][:, :, folding, :], sides[i + 1])
        tables[i + 1] = tables.get(i + 1, 0) + table
      elif folding.any() and not embedding_only:
        values = np.maximum(offset[i][folding], 0)
        rows = head_kernel.reshape(head_rows, -1, head_kernel.shape[-1])[:, folding, :].sum(axis=0)
        head_bias = (head_bias + values @ rows).astype(np.float32)
      removed_constant[i] |= folding
      keep[i] = keep[i] & ~remove
      changed = True
  return _build(params, masks, depth, kernel, pattern, keep, tables, embedding_only,
                None if embedding_only else (head_kernel, head_pattern, head_bias, head_rows))


def _build(params, masks, depth, kernel, pattern, keep, tables, embedding_only, head) -> Compacted:
  compact, compact_masks = {}, {}
  for i in range(depth):
    inputs = keep[i - 1] if i > 0 else None
    k = units.take(units.take(kernel[i], 2, inputs), 3, keep[i])
    p = units.take(units.take(pattern[i], 2, inputs), 3, keep[i])
    compact[f'conv_{i}'] = {'kernel': k}
    compact_masks[f'conv_{i}'] = {'kernel': pattern_or_none(k, p)}
    if i in tables:
      compact[f'conv_{i}'][BORDER_BIAS] = units.take(tables[i], 2, keep[i]).astype(np.float32)
      compact_masks[f'conv_{i}'][BORDER_BIAS] = None
    norm = params[f'norm_{i}']
    compact[f'norm_{i}'] = {name: units.take(units.folded(norm[name], (masks.get(f'norm_{i}') or {}).get(name)),
                                             0, keep[i]) for name in ('scale', 'offset')}
    compact_masks[f'norm_{i}'] = {'scale': None, 'offset': None}
  if not embedding_only:
    head_kernel, head_pattern, head_bias, head_rows = head
    rows = np.tile(keep[depth - 1], head_rows)  # Feature (position p, channel c) is row p * width + c.
    k = units.take(head_kernel, 0, rows)
    compact['head'] = {'kernel': k, 'bias': head_bias}
    compact_masks['head'] = {'kernel': pattern_or_none(k, units.take(head_pattern, 0, rows)), 'bias': None}
  return Compacted(compact, compact_masks, {f'conv_{i}': np.flatnonzero(keep[i]) for i in range(depth)})


def take_channels(tree, kept_units: dict[str, np.ndarray], *, embedding_only: bool = False):
  """A params-shaped tree (e.g. Meta-SGD's per-parameter learning rates) restricted to the kept channels."""
  depth = depth_of(tree)
  keep = {i: kept_units[f'conv_{i}'] for i in range(depth)}
  out = {}
  for i in range(depth):
    k = np.asarray(tree[f'conv_{i}']['kernel'])
    if i > 0:
      k = np.take(k, keep[i - 1], axis=2)
    out[f'conv_{i}'] = {'kernel': np.take(k, keep[i], axis=3)}
    out[f'norm_{i}'] = {name: np.take(np.asarray(tree[f'norm_{i}'][name]), keep[i], axis=0)
                        for name in ('scale', 'offset')}
  if not embedding_only:
    width = np.asarray(tree[f'conv_{depth - 1}']['kernel']).shape[-1]
    head_kernel = np.asarray(tree['head']['kernel'])
    rows = np.concatenate([p * width + keep[depth - 1] for p in range(head_kernel.shape[0] // width)])
    out['head'] = {'kernel': np.take(head_kernel, np.sort(rows), axis=0), 'bias': np.asarray(tree['head']['bias'])}
  return out
