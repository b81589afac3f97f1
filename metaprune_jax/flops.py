"""FLOPs of a (masked) MLP or Conv-4 forward pass on one example.

Counting convention: a multiply-add is 2 FLOPs, a bias add is 1 FLOP per
output unit; activations, the loss and memory traffic are not counted. For a
Dense layer with kernel ``[in, out]`` and bias ``[out]``:

* ``dense_flops = 2 * in * out + out``: what a dense kernel computes whatever
  the mask (a zeroed weight still costs its multiply-add on dense hardware);
* ``effective_flops = 2 * nnz(kernel) + out``: only the nonzero weights count,
  which is what a sparse kernel (CSR matmul, or a 2:4 tensor core for N:M
  masks) can realise. Bias adds are counted in full in both.

Effective FLOPs count the nonzero entries of the *masked* kernel, i.e. of
``apply_masks(params, masks)``: a weight that is exactly zero counts as pruned
whether a mask or training put it there. A hidden unit whose incoming weights
are all pruned still pays for its outgoing weights (no dead-unit propagation),
so the effective count is an upper bound on what structured removal would give.
"""

import jax
import numpy as np

from metaprune_jax import types
from metaprune_jax.masks import masking


def _dense_layers(params: types.Params) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
  """``(path, kernel [in, out], bias [out] or None)`` for every ``{'kernel', 'bias'}`` dict."""
  layers = []

  def visit(node, path):
    if not isinstance(node, dict):
      return
    if 'kernel' in node and not isinstance(node['kernel'], dict):
      kernel = np.asarray(node['kernel'])
      if kernel.ndim != 2:
        raise ValueError(f'flops counts Dense layers only; the kernel at {path or "/"} has shape '
                         f'{kernel.shape}, not [in, out].')
      bias = node.get('bias')
      layers.append((path, kernel, None if bias is None else np.asarray(bias)))
    for name in sorted(k for k in node if k not in ('kernel', 'bias')):
      visit(node[name], f'{path}/{name}')
  visit(params, '')
  if not layers:
    raise ValueError('params holds no Dense layer (no dict with a "kernel" leaf); flops counts MLPs.')
  return layers


def mlp_flops(params: types.Params, masks: types.Masks | None = None) -> dict[str, int]:
  """Dense and effective forward FLOPs of an MLP on one example.

  Args:
    params: Flax MLP params, e.g. ``{'Dense_0': {'kernel': [in, out], 'bias':
      [out]}, ...}`` (every dict holding a 2-D ``kernel`` is one layer).
    masks: optional mask tree mirroring ``params`` (``None`` leaves dense; a
      leaf may broadcast, e.g. per-unit gates ``[out]``), e.g. fixed pruning
      masks or ``hard_concrete.deterministic_gates(gate_logits)``.

  Returns:
    ``{'dense_flops', 'effective_flops', 'kernel_weights', 'nonzero_kernel_weights'}``
    as Python ints (see the module docstring for what is counted).
  """
  effective = masking.apply_masks(params, masks)
  dense_flops = effective_flops = total = nonzero = 0
  for _, kernel, bias in _dense_layers(jax.device_get(effective)):
    n_in, n_out = kernel.shape
    nnz = int(np.count_nonzero(kernel))
    bias_flops = 0 if bias is None else n_out
    dense_flops += 2 * n_in * n_out + bias_flops
    effective_flops += 2 * nnz + bias_flops
    total += kernel.size
    nonzero += nnz
  return {'dense_flops': dense_flops, 'effective_flops': effective_flops, 'kernel_weights': total,
          'nonzero_kernel_weights': nonzero}


def conv4_flops(params: types.Params, masks: types.Masks | None = None, *, image_size: int) -> dict:
  """FLOPs and sparsity of a (masked) Conv-4 forward pass on one image (``nets/conv.py`` layout).

  Same convention as :func:`mlp_flops`: a 3x3 SAME conv on an ``H x H`` input
  costs ``2 * H * H * 9 * in * out`` dense and ``2 * H * H * nnz(kernel)``
  effective (every kernel tap at every output pixel; border taps that read
  padding are counted too); the head is a Dense layer. Batch norm, ReLU and
  pooling are not counted. A channel is pruned when its whole filter
  (``kernel[..., c]``) is zero; its batch-norm output is then the constant
  ``offset``, so it still feeds the next layer (no dead-channel propagation).

  Args:
    params: Conv-4 parameters (``conv_i/kernel [3, 3, in, out]``, ``head``).
    masks: optional mask tree (fixed masks or deterministic gates).
    image_size: input side length, e.g. 28.

  Returns:
    ``dense_flops``, ``effective_flops``, ``conv_weights``,
    ``nonzero_conv_weights``, ``conv_weight_sparsity``, ``conv_channels``,
    ``pruned_channels``, ``channel_sparsity`` (Python numbers).
  """
  effective = jax.device_get(masking.apply_masks(params, masks))
  side, dense = image_size, 0
  eff = total = nonzero = channels = pruned = 0
  i = 0
  while f'conv_{i}' in effective:
    kernel = np.asarray(effective[f'conv_{i}']['kernel'])
    pixels = side * side
    dense += 2 * pixels * kernel.size
    nnz = int(np.count_nonzero(kernel))
    eff += 2 * pixels * nnz
    total += kernel.size
    nonzero += nnz
    channels += kernel.shape[-1]
    pruned += int(np.sum(~np.any(kernel.reshape(-1, kernel.shape[-1]) != 0, axis=0)))
    side //= 2
    i += 1
  if 'head' in effective:
    head = mlp_flops({'head': effective['head']})
    dense += head['dense_flops']
    eff += head['effective_flops']
  return {'dense_flops': int(dense), 'effective_flops': int(eff), 'conv_weights': int(total),
          'nonzero_conv_weights': int(nonzero), 'conv_weight_sparsity': 1.0 - nonzero / max(total, 1),
          'conv_channels': int(channels), 'pruned_channels': int(pruned),
          'channel_sparsity': pruned / max(channels, 1)}


def weight_costs(params: types.Params, *, image_size: int | None = None) -> tuple[dict[str, int], int]:
  """FLOPs of one kept weight of every kernel, and the FLOPs no kernel mask removes.

  The linear form of :func:`mlp_flops` (``image_size=None``) and
  :func:`conv4_flops` (``image_size``: the Conv-4 input side): for any mask that
  leaves biases dense, ``effective_flops == fixed + sum_l costs[l] * nnz(kernel_l)``.
  A Dense kernel weight costs one multiply-add (2 FLOPs); a kernel weight of
  ``conv_i`` costs one per output pixel, ``2 * s_i * s_i`` with ``s_0 =
  image_size`` and ``s_{i+1} = s_i // 2`` (SAME padding keeps the side, each
  2x2 max-pool halves it, rounding down). The fixed FLOPs are the bias adds.

  Args:
    params: MLP params (every dict holding a 2-D ``kernel``), or Conv-4 params
      (``conv_i/kernel [3, 3, in, out]``, ``head``) when ``image_size`` is given.
    image_size: None for an MLP; the input side length of a Conv-4, e.g. 28.

  Returns:
    ``({'conv_0/kernel': 2 * 28 * 28, ..., 'head/kernel': 2}, fixed_flops)``:
    costs keyed by the kernel's path, as Python ints.
  """
  params = jax.device_get(params)
  if image_size is None:
    layers = _dense_layers(params)
    return ({f'{path[1:]}/kernel': 2 for path, _, _ in layers},
            sum(0 if bias is None else bias.size for _, _, bias in layers))
  if int(image_size) < 1 or 'conv_0' not in params:
    raise ValueError(f'weight_costs(image_size={image_size!r}) counts a Conv-4 (conv_0 ... and a head) on a '
                     f'positive image size; got keys {sorted(params)}. Pass image_size=None for an MLP.')
  costs, side, i = {}, int(image_size), 0
  while f'conv_{i}' in params:
    costs[f'conv_{i}/kernel'] = 2 * side * side
    side //= 2
    i += 1
  fixed = 0
  if 'head' in params:
    head_costs, fixed = weight_costs({'head': params['head']})
    costs.update(head_costs)
  return costs, fixed
