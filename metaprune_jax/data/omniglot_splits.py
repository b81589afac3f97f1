"""Omniglot meta-train / validation / test splits and rotated copies of classes.

Splits are disjoint by character or by alphabet; rotations are added after
splitting so a rotated held-out character never lands in meta-train.
"""

from typing import NamedTuple, Sequence, Union

import numpy as np

from metaprune_jax.data import omniglot
from metaprune_jax.data import rotations as rotations_lib


class OmniglotSplits(NamedTuple):
  """Meta-train / meta-validation / meta-test datasets (disjoint characters)."""
  train: omniglot.OmniglotDataset
  validation: omniglot.OmniglotDataset
  test: omniglot.OmniglotDataset


def _subset(dataset: omniglot.OmniglotDataset, keep: np.ndarray) -> omniglot.OmniglotDataset:
  return omniglot.OmniglotDataset(*(field[keep] for field in dataset))


def rotate_classes(dataset: omniglot.OmniglotDataset,
                   degrees: Sequence[int] = rotations_lib.ROTATIONS) -> omniglot.OmniglotDataset:
  """Adds each class rotated by ``degrees`` as new classes (MAML-style).

  Returns classes ``[originals, originals rotated by degrees[0], ...]``, i.e.
  ``classes * (1 + len(degrees))``. Apply after splitting (``split_omniglot``
  does) so rotated copies stay on their character's side.
  """
  degrees = rotations_lib.check_rotations(degrees)
  if np.any(dataset.rotations != 0):
    raise ValueError('rotate_classes expects an unrotated dataset (all rotations 0).')
  parts = [dataset]
  for d in degrees:
    parts.append(dataset._replace(
        images=np.rot90(dataset.images, k=d // 90, axes=(2, 3)),
        rotations=np.full_like(dataset.rotations, d)))
  return omniglot.OmniglotDataset(*(np.concatenate(fields) for fields in zip(*parts)))


def _resolve_counts(sizes, total: int) -> tuple[int, int, int]:
  """``sizes`` (3 ints = counts, or 3 floats = fractions) -> 3 counts."""
  if len(sizes) != 3:
    raise ValueError(f'sizes must be (train, validation, test), got {sizes!r}.')
  is_int = [isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in sizes]
  if all(is_int):
    counts = tuple(int(s) for s in sizes)
    if min(counts) < 0 or sum(counts) > total:
      raise ValueError(f'sizes {sizes} (counts) must be >= 0 and sum to at most {total}.')
  elif not any(is_int):
    fractions = np.asarray(sizes, np.float64)
    if fractions.min() < 0 or fractions.sum() > 1 + 1e-9:
      raise ValueError(f'sizes {sizes} (fractions) must be >= 0 and sum to at most 1.')
    edges = np.round(np.cumsum(fractions) * total).astype(int)
    counts = (int(edges[0]), int(edges[1] - edges[0]), int(edges[2] - edges[1]))
  else:
    raise ValueError(f'sizes must be all ints (counts) or all floats (fractions), got {sizes!r}.')
  if counts[0] < 1:
    raise ValueError(f'sizes {sizes} leave no meta-train unit out of {total}; enlarge sizes[0].')
  return counts


def split_omniglot(
    dataset: omniglot.OmniglotDataset,
    *,
    sizes: Sequence[Union[int, float]] = (0.7, 0.15, 0.15),
    by: str = 'character',
    seed: int = 0,
    rotations: Sequence[int] = (),
) -> OmniglotSplits:
  """Splits into meta-train / validation / test, disjoint by character or alphabet.

  Args:
    dataset: an unrotated ``omniglot.OmniglotDataset`` (one class per character).
    sizes: (train, validation, test) as fractions (floats) or counts (ints) of
      the units (characters, or alphabets when ``by='alphabet'``).
    by: ``'character'`` or ``'alphabet'``.
    seed: seed of the unit shuffle (host-side numpy).
    rotations: e.g. ``(90, 180, 270)``: added as extra classes to each split
      after splitting, so a rotated test character never lands in train.

  Returns:
    ``OmniglotSplits``; each keeps the original class order.
  """
  if np.any(dataset.rotations != 0):
    raise ValueError('split_omniglot expects an unrotated dataset; pass rotations= instead.')
  if by == 'character':
    unit_of_class = np.arange(len(dataset.alphabets))
  elif by == 'alphabet':
    _, unit_of_class = np.unique(dataset.alphabets, return_inverse=True)
  else:
    raise ValueError(f"by must be 'character' or 'alphabet', got {by!r}.")
  num_units = int(unit_of_class.max()) + 1 if len(unit_of_class) else 0
  counts = _resolve_counts(tuple(sizes), num_units)
  order = np.random.default_rng(seed).permutation(num_units)
  edges = np.cumsum((0,) + counts)
  parts = []
  for lo, hi in zip(edges[:-1], edges[1:]):
    part = _subset(dataset, np.isin(unit_of_class, order[lo:hi]))
    parts.append(rotate_classes(part, rotations) if rotations else part)
  return OmniglotSplits(*parts)
