"""The quarter-turn rotations that add classes to a character dataset (MAML-style).

Shared by the image loader (``data/omniglot.py``) and the pen-trajectory loader
(``data/strokes.py``): a rotated copy of every character becomes a new class.
"""

from typing import Sequence

ROTATIONS = (90, 180, 270)


def check_rotations(degrees: Sequence[int], name: str = 'rotations') -> tuple[int, ...]:
  """``degrees`` as a tuple of ints, checked to be distinct values among ``ROTATIONS``.

  Args:
    degrees: the requested rotations, counterclockwise, in degrees.
    name: what the error calls them (the launchers pass their flag, e.g. ``'--config.rotations'``).

  Raises:
    ValueError: ``"<name>=<degrees> is invalid: ..."``, naming the allowed values.
  """
  requested = tuple(degrees)
  try:
    degrees = tuple(int(d) for d in requested)
  except (TypeError, ValueError):
    degrees = None
  if degrees is None or any(d not in ROTATIONS for d in degrees) or len(set(degrees)) != len(degrees):
    raise ValueError(f'{name}={requested!r} is invalid: use distinct values among {ROTATIONS}, or ().')
  return degrees
