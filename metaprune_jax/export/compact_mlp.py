"""Structured removal for the MLP (``nets.mlp``): dead hidden neurons out of their layer and the next.

Params ``{'Dense_i': {'kernel': [in_i, out_i], 'bias': [out_i]}}`` for ``i = 0 ..
L``; ``Dense_L`` is the readout. A hidden neuron ``j`` of layer ``i`` is removed
(its kernel column and bias in ``Dense_i`` and its row in ``Dense_{i+1}``) when

* it has no fan-out: every weight from it into a kept neuron of the next layer
  is pruned, so nothing downstream reads it; or
* it has no fan-in (every incoming weight pruned, e.g. a closed ``out_unit``
  gate) and its constant ``act(bias_j)`` may go (``units.constant_removable``);
  a nonzero constant is added to the next layer's bias (``act(bias_j) *
  kernel_{i+1}[j, :]``), exact up to float rounding.

Removals repeat until nothing changes. Input features and outputs are never
removed.
"""

import numpy as np

from metaprune_jax.export import units
from metaprune_jax.export.compacted import Compacted
from metaprune_jax.export.compacted import pattern_or_none
from metaprune_jax.nets import mlp


def _layer_names(params) -> list[str]:
  names = []
  while f'Dense_{len(names)}' in params:
    names.append(f'Dense_{len(names)}')
  if not names or len(names) != len(params):
    raise ValueError(f'params must be Dense_0 ... Dense_L of nets.mlp.MLP, got keys {sorted(params)}.')
  return names


def kept_neurons(params, masks, *, activation: str = 'relu', adapts: bool = True):
  """Which hidden neurons survive, and the biases after folding removed constants.

  Returns:
    ``(keep, biases)``: ``keep[i]`` boolean ``[out_i]`` for each hidden layer ``i``;
    ``biases[name]`` float32 (with the constants of removed no-fan-in neurons added).
  """
  names = _layer_names(params)
  act = mlp.ACTIVATIONS[activation]
  masks = masks or {}
  kernels = {n: units.folded(params[n]['kernel'], (masks.get(n) or {}).get('kernel')) for n in names}
  patterns = {n: units.full_pattern(params[n]['kernel'], (masks.get(n) or {}).get('kernel')) for n in names}
  biases = {n: units.folded(params[n]['bias'], (masks.get(n) or {}).get('bias')) for n in names}
  keep = [np.ones(kernels[n].shape[1], bool) for n in names[:-1]]
  changed = True
  while changed:
    changed = False
    for i, name in enumerate(names[:-1]):
      rows = keep[i - 1] if i > 0 else np.ones(kernels[name].shape[0], bool)
      cols_next = keep[i + 1] if i + 1 < len(keep) else np.ones(kernels[names[i + 1]].shape[1], bool)
      fan_in = patterns[name][rows].any(axis=0)
      fan_out = patterns[names[i + 1]][:, cols_next].any(axis=1)
      constant = ~fan_in & units.constant_removable(act, biases[name], adapts)
      remove = keep[i] & (~fan_out | constant)
      if not remove.any():
        continue
      folding = remove & constant & fan_out
      if folding.any():  # The next layer sees act(bias_j) from neuron j: a bias.
        values = np.asarray(act(biases[name][folding]), np.float32)
        biases[names[i + 1]] = (biases[names[i + 1]] + values @ kernels[names[i + 1]][folding]).astype(np.float32)
      keep[i] = keep[i] & ~remove
      changed = True
  return keep, biases


def take_neurons(tree, keep: list[np.ndarray]):
  """A params-shaped tree (params, masks, per-parameter learning rates) restricted to the kept neurons."""
  names = _layer_names(tree)
  out = {}
  for i, name in enumerate(names):
    rows = keep[i - 1] if i > 0 else None
    cols = keep[i] if i < len(keep) else None
    leaf = tree[name] or {}
    kernel, bias = leaf.get('kernel'), leaf.get('bias')
    out[name] = {
        'kernel': None if kernel is None else units.take(units.take(np.asarray(kernel), 0, rows), 1, cols),
        'bias': None if bias is None else units.take(np.asarray(bias), 0, cols)}
  return out


def compact_mlp(params, masks=None, *, activation: str = 'relu', adapts: bool = True) -> Compacted:
  """Removes the MLP's dead hidden neurons (module docstring).

  Args:
    params: ``nets.mlp.MLP`` params.
    masks: None or a tree mirroring ``params`` of (deterministic) gate values that
      broadcast onto their leaves (``[in, out]``, ``[out]`` or ``[in, 1]``).
    activation: the MLP's hidden nonlinearity (``mlp.ACTIVATIONS``).
    adapts: whether the exported model is adapted (``units`` module docstring).

  Returns:
    ``Compacted``; ``kept_units`` names each hidden layer (``'Dense_i'``).
  """
  names = _layer_names(params)
  masks = masks or {n: None for n in names}
  keep, biases = kept_neurons(params, masks, activation=activation, adapts=adapts)
  folded = {n: {'kernel': units.folded(params[n]['kernel'], (masks.get(n) or {}).get('kernel')),
                'bias': biases[n]} for n in names}
  patterns = {n: {'kernel': units.full_pattern(params[n]['kernel'], (masks.get(n) or {}).get('kernel')),
                  'bias': None} for n in names}
  compact = take_neurons(folded, keep)
  compact_patterns = take_neurons(patterns, keep)
  compact_masks = {n: {'kernel': pattern_or_none(compact[n]['kernel'], compact_patterns[n]['kernel']),
                       'bias': None} for n in names}
  return Compacted(compact, compact_masks, {n: np.flatnonzero(k) for n, k in zip(names, keep)})
