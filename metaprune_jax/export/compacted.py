"""``Compacted``: what structured removal of a pruned net returns (the contract of every ``compact_*``)."""

from typing import NamedTuple

import numpy as np


class Compacted(NamedTuple):
  """A pruned net with its removed units taken out.

  Attributes:
    params: the compact parameters as float32 numpy arrays, in the layout of the
      net's own params with smaller shapes; the masks (gate values, unit gains)
      are folded into the weights (``w * m``), so a forward pass needs no mask.
    masks: a tree mirroring ``params`` with a ``{0, 1}`` float32 pattern where a
      kept leaf still holds pruned weights (unstructured masks inside kept units),
      and ``None`` for leaves with no pruned entry. Adapting the exported model
      multiplies its inner-loop step by this pattern, as the masked model does.
    kept_units: ``{layer name: int array of the kept unit indices of the original
      layer}`` for every layer whose units were removed (for reports and tests).
  """
  params: dict
  masks: dict
  kept_units: dict[str, np.ndarray]


def pattern_or_none(weight: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
  """The ``{0, 1}`` pattern of ``mask`` broadcast onto ``weight``, or None when nothing is pruned."""
  if mask is None:
    return None
  pattern = np.broadcast_to(np.asarray(mask) != 0, weight.shape)
  return None if pattern.all() else pattern.astype(np.float32)
