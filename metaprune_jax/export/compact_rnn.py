"""Structured removal of closed hidden units from a masked LSTM / GRU (the ``nets.rnn`` layout).

A hidden unit is removed when it provably cannot affect any output, for any
input and also after any masked inner-loop adaptation. "Closed" below means
pruned by a mask (a gate exactly 0, a per-weight gate or a hidden-unit gate on
``unit_scale`` expanded onto the unit's weights), not merely equal to zero: an
unmasked weight that happens to be 0 (an LSTM's initial input-gate bias) is
trainable, and the masked model's inner loop can move it.

* **Dead units** (their state stays exactly 0). Take the candidate gate block
  ``2`` (LSTM ``g``, GRU ``n``). If unit ``j``'s candidate pre-activation only
  receives closed entries (input column, bias) and recurrent entries from dead
  units, it is exactly 0 at every step, whatever its other gates do: for the
  LSTM ``c' = sigmoid(f) * c + sigmoid(i) * tanh(0)`` keeps ``c = 0`` from the zero
  initial state, so ``h' = sigmoid(o) * tanh(0) = 0``; for the GRU ``n = tanh(0) = 0``
  (the recurrent term is ``sum_k r_k h_k U_n[k, j]`` with ``h_k = 0`` or ``U_n[k, j]``
  closed) and ``h' = (1 - z) * 0 + z * h`` keeps ``h = 0``. The dead set is the
  complement of what the live units (an open candidate input column or bias)
  reach through open candidate-block recurrent entries, so units that only feed
  each other are dead too. A dead unit's recurrent and readout rows multiply an
  exact 0 and its weights get zero gradients, so it stays dead under adaptation.
  A unit whose candidate bias is open (even if every incoming weight is closed)
  is live and kept.
* **Units without fan-out.** A live unit is kept only if it reaches the readout
  (an open readout row) through open recurrent entries between live units. The
  others, including cycles that only feed each other, influence nothing kept.

Removing unit ``j`` deletes column ``j`` of every gate block of
``input_kernel``, ``recurrent_kernel`` and ``bias``, row ``j`` of
``recurrent_kernel`` and row ``j`` of the readout kernel (and the same entries of
the mask patterns); gate blocks keep their order and the ``nets.rnn`` layout, so
the compact params run through the unchanged ``rnn.rnn_apply`` with no masks.
When every unit is removed the arrays have zero width (``H' = 0``) and
``rnn_apply`` returns the readout bias.
"""

import jax
import numpy as np

from metaprune_jax import types
from metaprune_jax.export.compacted import Compacted
from metaprune_jax.export.compacted import pattern_or_none
from metaprune_jax.masks import masking
from metaprune_jax.nets import rnn

CANDIDATE_BLOCK = 2
"""Gate block whose closed pre-activation holds a zero state at zero (LSTM ``g``, GRU ``n``)."""
_LEAVES = ('input_kernel', 'recurrent_kernel', 'bias', 'readout', rnn.UNIT_SCALE)


def _open(shape: tuple[int, ...], mask) -> np.ndarray:
  """Where a leaf of ``shape`` is not pruned by ``mask`` (``None``: nowhere), bool ``shape``."""
  if mask is None:
    return np.ones(shape, bool)
  return np.broadcast_to(np.asarray(mask) != 0, shape)


def open_entries(params: types.Params, masks: types.Masks | None, num_gates: int) -> dict:
  """The entries no mask closes, with the hidden-unit gate (on ``unit_scale``) expanded onto its unit.

  Args:
    params: LSTM/GRU params (``nets.rnn`` layout), ``H`` hidden units.
    masks: ``None`` or a tree mirroring ``params`` (``None`` leaves are unmasked).
    num_gates: ``G``.

  Returns:
    Bool arrays ``{'input_kernel': [in, G*H], 'recurrent_kernel': [H, G*H],
    'bias': [G*H], 'readout': {'kernel': [H, out], 'bias': [out]}, 'unit_scale': [H]}``.
  """
  masks = masks or {}
  readout, readout_masks = params['readout'], masks.get('readout') or {}
  units = _open((rnn.hidden_size_of(params),), masks.get(rnn.UNIT_SCALE))
  columns = np.tile(units, num_gates)
  recurrent = _open(np.shape(params['recurrent_kernel']), masks.get('recurrent_kernel'))
  return {
      'input_kernel': _open(np.shape(params['input_kernel']), masks.get('input_kernel')) & columns[None, :],
      'recurrent_kernel': recurrent & units[:, None] & columns[None, :],
      'bias': _open(np.shape(params['bias']), masks.get('bias')) & columns,
      'readout': {
          'kernel': _open(np.shape(readout['kernel']), readout_masks.get('kernel')) & units[:, None],
          'bias': _open(np.shape(readout['bias']), readout_masks.get('bias')),
      },
      rnn.UNIT_SCALE: units,
  }


def _closure(start: np.ndarray, edges: np.ndarray) -> np.ndarray:
  """Units reachable from ``start`` ``[H]`` along ``edges[k, j]`` (``k -> j``) ``[H, H]``, ``start`` included."""
  reached = start.copy()
  while True:
    grown = reached | (edges & reached[:, None]).any(axis=0)
    if (grown == reached).all():
      return reached
    reached = grown


def kept_hidden_units(open_: dict, num_gates: int) -> np.ndarray:
  """Which hidden units can affect an output (live and with a path to the readout), bool ``[H]``.

  Args:
    open_: ``open_entries(params, masks, num_gates)``.
    num_gates: ``G``.
  """
  hidden = open_['recurrent_kernel'].shape[0]
  candidate = slice(CANDIDATE_BLOCK * hidden, (CANDIDATE_BLOCK + 1) * hidden)
  sources = open_['input_kernel'][:, candidate].any(axis=0) | open_['bias'][candidate]
  live = _closure(sources, open_['recurrent_kernel'][:, candidate])
  feeds = open_['recurrent_kernel'].reshape(hidden, num_gates, hidden).any(axis=1)  # [k, j]: k feeds j.
  feeds = feeds & live[:, None] & live[None, :]
  sinks = open_['readout']['kernel'].any(axis=1) & live
  return _closure(sinks, feeds.T)


def _take_units(tree: dict, kept: np.ndarray, num_gates: int) -> dict:
  """``tree`` (params layout) restricted to the ``kept`` unit indices; gate blocks stay contiguous."""
  hidden = tree['recurrent_kernel'].shape[0]
  columns = (np.arange(num_gates)[:, None] * hidden + kept[None, :]).reshape(-1)
  out = {
      'input_kernel': tree['input_kernel'][:, columns],
      'recurrent_kernel': tree['recurrent_kernel'][np.ix_(kept, columns)],
      'bias': tree['bias'][columns],
      'readout': {'kernel': tree['readout']['kernel'][kept], 'bias': tree['readout']['bias']},
  }
  if rnn.UNIT_SCALE in tree:
    out[rnn.UNIT_SCALE] = tree[rnn.UNIT_SCALE][kept]
  return out


def take_hidden_units(tree: dict, kept: np.ndarray) -> dict:
  """A params-shaped tree (Meta-SGD's inner learning rates) cut to the ``kept`` hidden units of ``compact_rnn``."""
  tree = jax.tree.map(np.asarray, tree)
  return _take_units(tree, np.asarray(kept, np.int64), rnn.num_gates_of(tree))


def compact_rnn(params: types.Params, masks: types.Masks | None, *, cell: str,
                fold_unit_scale: bool = True) -> Compacted:
  """Removes the hidden units of a masked LSTM / GRU that cannot affect any output.

  Args:
    params: trained params (``nets.rnn`` layout, optional ``unit_scale`` ``[H]``).
    masks: ``None`` or a gate tree mirroring ``params`` (per-weight gates on the
      kernels, hidden-unit gates ``[H]`` on ``unit_scale``); the masked model is
      ``rnn.rnn_apply(params, x, masks, cell=cell)``.
    cell: ``'lstm'`` or ``'gru'``.
    fold_unit_scale: fold ``unit_scale`` (times its gate) into the weights and drop
      the leaf (default). False keeps it as a ``[H']`` leaf with the gate folded in
      and folds only the masks into the other weights, so that adapting the compact
      params updates the same leaves as the masked model's inner loop (which adapts
      ``unit_scale`` as a weight). With ``H' = 0`` the leaf is dropped either way
      (``rnn.num_gates_of`` needs ``H > 0`` to expand it).

  Returns:
    ``Compacted``: float32 numpy params ``{'input_kernel': [in, G*H'],
    'recurrent_kernel': [H', G*H'], 'bias': [G*H'], 'readout': {'kernel': [H', out],
    'bias': [out]}}`` (plus ``'unit_scale': [H']`` when not folded), their ``{0, 1}``
    mask patterns (``None`` where nothing is pruned), and
    ``kept_units={'hidden': [H'] int indices}``.
  """
  num_gates = rnn.NUM_GATES.get(cell)
  if num_gates is None:
    raise ValueError(f'cell={cell!r} is not supported; valid cells: {sorted(rnn.NUM_GATES)}.')
  unknown = set(params) - set(_LEAVES)
  if unknown:
    raise ValueError(f'params hold leaves {sorted(unknown)} outside the nets.rnn layout {list(_LEAVES)}.')
  hidden = rnn.hidden_size_of(params)
  if np.shape(params['bias']) != (num_gates * hidden,):
    raise ValueError(f"params do not match cell={cell!r}: bias has shape {np.shape(params['bias'])}, "
                     f'expected ({num_gates * hidden},).')
  open_ = open_entries(params, masks, num_gates)
  kept = np.flatnonzero(kept_hidden_units(open_, num_gates))
  fold = fold_unit_scale or kept.size == 0 or rnn.UNIT_SCALE not in params
  folded = rnn.effective_params(params, masks) if fold else masking.apply_masks(params, masks)
  folded = {k: v for k, v in folded.items() if not (fold and k == rnn.UNIT_SCALE)}
  compact = _take_units(jax.tree.map(lambda x: np.asarray(x, np.float32), folded), kept, num_gates)
  patterns = _take_units({k: v for k, v in open_.items() if k in compact}, kept, num_gates)
  return Compacted(params=compact, masks=jax.tree.map(pattern_or_none, compact, patterns), kept_units={'hidden': kept})
