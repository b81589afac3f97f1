"""The quarter-turn rotations that add classes to a character dataset (MAML-style).

Shared by the image loader (``data/omniglot.py``) and the pen-trajectory loader
(``data/strokes.py``): a rotated copy of every character becomes a new class.
"""

from typing import Sequence

ROTATIONS = (90, 180, 270)


def check_rotations(degrees: Sequence[int]) -> tuple[int, ...]:
  """``degrees`` as a tuple of ints, checked to be distinct values among ``ROTATIONS``.

  Raises:
    ValueError: naming the allowed values, for anything else.
  """
  degrees = tuple(int(d) for d in degrees)
  if any(d not in ROTATIONS for d in degrees) or len(set(degrees)) != len(degrees):
    raise ValueError(f'rotations must be distinct values among {ROTATIONS}, got {degrees}.')
  return degrees
