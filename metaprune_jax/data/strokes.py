"""Omniglot pen trajectories (strokes) as fixed-length ``(dx, dy, pen_up)`` sequences.

Source: ``strokes_background_small1.zip`` and ``strokes_background_small2.zip``
(Lake et al., MIT licence) in ``data_dir``. Each drawing is a text file
``<archive>/<Alphabet>/characterNN/<id>_<drawer>.txt``::

  START
  x,y,t        (one line per pen sample; t in milliseconds)
  ...
  BREAK        (ends each stroke; one per stroke)

Greek and Latin appear, byte-identical, in both archives; each alphabet is
kept once (first archive wins), so classes are unique ``Alphabet/characterNN``.

Preprocessing (``drawing_to_sequence``):

* **Resampling by arc length.** Consecutive duplicate samples are dropped and
  the ``num_points`` output points are shared among strokes: every stroke gets
  one point, the rest go to strokes in proportion to their pen-down arc length
  (largest remainder). Within a stroke the points are equally spaced in arc
  length from its first to its last sample (one point: its first sample).
  Timestamps are ignored (a few files have non-monotonic ``t``). A drawing with
  more strokes than ``num_points`` keeps its first ``num_points - 1`` strokes
  and joins the rest into the last one (pen-up flags lost there; rare for 64
  points: the largest drawing has 29 strokes).
* **Per-drawing normalisation.** Points are centred on the drawing's bounding-box
  centre and divided by half its longer side, so positions lie in ``[-1, 1]``
  (a single-dot drawing is only centred). Scale-free per drawing, so no dataset
  statistics leak across splits.
* **Features per step** ``t``: ``(dx, dy, pen_up)`` with ``dx_0, dy_0`` the first
  point's normalised position and ``dx_t = x_t - x_{t-1}`` after it, so
  ``cumsum(dx)`` recovers the normalised positions; ``pen_up = 1`` on the last
  point of each stroke (the pen lifts after it; the final step is always 1).

The decoded array is cached as an ``.npz`` whose name and stored key hash the
format version, ``num_points`` and the archives' names, sizes and mtimes; a
cache whose stored key differs is ignored and rewritten. A truncated or corrupt
archive (or drawing) raises a ``ValueError`` naming the zip (and the member).
"""

import hashlib
import logging
import os
import re
import tempfile
import zipfile
import zlib
from typing import NamedTuple

import numpy as np

from metaprune_jax.data import rotations as rotations_lib

ARCHIVES = ('strokes_background_small1.zip', 'strokes_background_small2.zip')
CACHE_VERSION = 1
_DRAWING_RE = re.compile(r'^[^/]+/([^/]+)/(character\d+)/\d+_(\d+)\.txt$')


class Strokes(NamedTuple):
  """Fixed-length stroke sequences of Omniglot characters.

  Attributes:
    drawings: ``[classes, drawers, num_points, 3]`` float32 ``(dx, dy, pen_up)``.
    names: ``classes`` names ``'Alphabet/characterNN'``, sorted.
  """
  drawings: np.ndarray
  names: tuple[str, ...]


def parse_strokes_text(text: str) -> list[np.ndarray]:
  """Parses one drawing file into its strokes.

  Args:
    text: file contents (``START``, ``x,y,t`` lines, ``BREAK`` after each stroke).

  Returns:
    One float64 array ``[points, 3]`` of ``(x, y, t)`` per stroke.

  Raises:
    ValueError: on a missing ``START``, a malformed line, an empty stroke or
      samples after the last ``BREAK``.
  """
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if not lines or lines[0] != 'START':
    raise ValueError('stroke text must begin with a START line.')
  strokes, current = [], []
  for number, line in enumerate(lines[1:], start=2):
    if line == 'BREAK':
      if not current:
        raise ValueError(f'empty stroke ending at line {number}.')
      strokes.append(np.asarray(current, np.float64))
      current = []
      continue
    fields = line.split(',')
    if len(fields) != 3:
      raise ValueError(f'line {number} is not "x,y,t": {line!r}.')
    current.append([float(f) for f in fields])
  if current:
    raise ValueError('samples after the last BREAK (unterminated stroke).')
  if not strokes:
    raise ValueError('drawing has no strokes.')
  return strokes


def _allocate(lengths: np.ndarray, num_points: int) -> np.ndarray:
  """Points per stroke: one each, the rest proportional to length (largest remainder)."""
  counts = np.ones(len(lengths), np.int64)
  spare = num_points - len(lengths)
  total = lengths.sum()
  share = (lengths / total if total > 0 else np.full(len(lengths), 1 / len(lengths))) * spare
  extra = np.floor(share).astype(np.int64)
  remainder = spare - extra.sum()
  order = np.argsort(-(share - extra), kind='stable')
  extra[order[:remainder]] += 1
  return counts + extra


def _resample_stroke(xy: np.ndarray, count: int) -> np.ndarray:
  """``count`` points equally spaced in arc length along the polyline ``xy`` ``[n, 2]``."""
  if count == 1 or len(xy) == 1:
    return np.repeat(xy[:1], count, axis=0)
  arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
  targets = np.linspace(0.0, arc[-1], count)
  return np.stack([np.interp(targets, arc, xy[:, 0]), np.interp(targets, arc, xy[:, 1])], 1)


def drawing_to_sequence(strokes: list[np.ndarray], num_points: int) -> np.ndarray:
  """Resamples one drawing to ``[num_points, 3]`` ``(dx, dy, pen_up)`` (see module doc)."""
  if num_points < 2:
    raise ValueError(f'num_points must be >= 2, got {num_points}.')
  polylines = []
  for stroke in strokes:
    xy = stroke[:, :2]
    keep = np.concatenate([[True], np.any(np.diff(xy, axis=0) != 0, axis=1)])
    polylines.append(xy[keep])
  if len(polylines) > num_points:
    polylines = polylines[:num_points - 1] + [np.concatenate(polylines[num_points - 1:])]
  lengths = np.array([np.linalg.norm(np.diff(p, axis=0), axis=1).sum() for p in polylines])
  counts = _allocate(lengths, num_points)
  points = np.concatenate([_resample_stroke(p, c) for p, c in zip(polylines, counts)])
  pen_up = np.zeros(num_points)
  pen_up[np.cumsum(counts) - 1] = 1.0
  low, high = points.min(0), points.max(0)
  half_side = (high - low).max() / 2
  points = (points - (low + high) / 2) / (half_side if half_side > 0 else 1.0)
  deltas = np.diff(points, axis=0, prepend=np.zeros((1, 2)))
  return np.concatenate([deltas, pen_up[:, None]], 1).astype(np.float32)


def _archive_paths(data_dir: str) -> list[str]:
  paths = [os.path.join(data_dir, name) for name in ARCHIVES]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise ValueError(f'data_dir={data_dir!r} lacks the Omniglot strokes archives {missing}; '
                     f'point data_dir at the folder holding {list(ARCHIVES)}.')
  return paths


def _decode_archive(path: str, num_points: int, skip_alphabets: set[str],
                    drawings: dict[str, dict[int, np.ndarray]]) -> set[str]:
  """Adds the drawings of the archive ``path`` (alphabets not in ``skip_alphabets``) to ``drawings``; returns the
  archive's alphabets.

  Raises:
    ValueError: the archive is truncated or corrupt, or a drawing is malformed (the message names the file).
  """
  member = None
  try:
    with zipfile.ZipFile(path) as archive:
      members = [m for m in archive.namelist()
                 if not m.startswith('__MACOSX/') and _DRAWING_RE.match(m)]
      alphabets = {_DRAWING_RE.match(m).group(1) for m in members}
      for member in sorted(members):
        alphabet, character, drawer = _DRAWING_RE.match(member).groups()
        if alphabet in skip_alphabets:  # Duplicate alphabet from an earlier archive.
          continue
        strokes = parse_strokes_text(archive.read(member).decode('ascii'))
        drawings.setdefault(f'{alphabet}/{character}', {})[int(drawer)] = (
            drawing_to_sequence(strokes, num_points))
  except PermissionError:
    raise
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
    where = path if member is None else f'{path}:{member}'
    raise ValueError(f'Cannot read the Omniglot strokes archive {where} ({type(e).__name__}: {e}): it is truncated '
                     f'or corrupt. Download {os.path.basename(path)} again (github.com/brendenlake/omniglot, folder '
                     'python/) into --config.task.data_dir.') from e
  return alphabets


def _decode(paths: list[str], num_points: int) -> Strokes:
  drawings: dict[str, dict[int, np.ndarray]] = {}
  seen_alphabets: set[str] = set()
  for path in paths:
    seen_alphabets |= _decode_archive(path, num_points, seen_alphabets, drawings)
  names = tuple(sorted(drawings))
  drawer_sets = {tuple(sorted(drawings[n])) for n in names}
  if len(drawer_sets) != 1:
    raise ValueError(f'characters have different drawer sets: {sorted(drawer_sets)[:3]}...')
  array = np.stack([np.stack([drawings[n][d] for d in sorted(drawings[n])]) for n in names])
  return Strokes(array, names)


def cache_key(data_dir: str, num_points: int) -> str:
  """Hash of the format version, ``num_points`` and the archives' names, sizes and mtimes."""
  parts = [f'v{CACHE_VERSION}', f'num_points={num_points}']
  for path in _archive_paths(data_dir):
    stat = os.stat(path)
    parts.append(f'{os.path.basename(path)}:{stat.st_size}:{stat.st_mtime_ns}')
  return hashlib.sha256('|'.join(parts).encode()).hexdigest()[:16]


def _read_cache(path: str, key: str) -> Strokes | None:
  if not os.path.isfile(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as cached:
      if str(cached['key']) != key:
        return None
      return Strokes(cached['drawings'], tuple(str(n) for n in cached['names']))
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('Ignoring unreadable strokes cache %s (%s); rebuilding it.', path, e)
    return None


def load_strokes(data_dir: str, *, num_points: int = 64,
                 cache_dir: str | None = None) -> Strokes:
  """Decodes (or loads from cache) every background drawing.

  Args:
    data_dir: folder holding ``strokes_background_small{1,2}.zip`` (e.g.
      ``../shared/data/omniglot`` beside the checkout).
    num_points: sequence length after resampling.
    cache_dir: if set, the decoded array is cached there as
      ``omniglot_strokes_<num_points>_<key>.npz`` (see module doc); ``None``
      disables caching.

  Returns:
    ``Strokes`` with ``drawings`` ``[classes, drawers, num_points, 3]``.
  """
  if num_points < 2:
    raise ValueError(f'num_points must be >= 2, got {num_points}.')
  paths = _archive_paths(data_dir)
  if not cache_dir:
    return _decode(paths, num_points)
  key = cache_key(data_dir, num_points)
  cache_path = os.path.join(cache_dir, f'omniglot_strokes_{num_points}_{key}.npz')
  cached = _read_cache(cache_path, key)
  if cached is not None:
    return cached
  data = _decode(paths, num_points)
  os.makedirs(cache_dir, exist_ok=True)
  # Write then rename, so a concurrent reader never sees a partial file.
  fd, tmp_path = tempfile.mkstemp(dir=cache_dir, suffix='.npz.tmp')
  with os.fdopen(fd, 'wb') as f:
    np.savez(f, drawings=data.drawings, names=np.array(data.names), key=np.array(key))
  os.replace(tmp_path, cache_path)
  return data


def rotate_drawings(data: Strokes, degrees=rotations_lib.ROTATIONS) -> Strokes:
  """Adds every character rotated by ``degrees`` as new classes (MAML-style augmentation).

  Rotating the pen positions by a multiple of 90 degrees is exact on the features:
  ``(dx, dy)`` are a linear function of the normalised positions (first position,
  then differences), and the bounding-box normalisation is invariant to it, so
  ``(dx, dy) -> R (dx, dy)`` and ``pen_up`` is unchanged. Apply after
  ``split_characters`` so a rotated copy stays on its character's side.

  Args:
    data: ``Strokes`` with ``drawings`` ``[classes, drawers, num_points, 3]``.
    degrees: distinct values among ``(90, 180, 270)``, counterclockwise.

  Returns:
    ``Strokes`` with ``classes * (1 + len(degrees))`` classes: the originals, then
    all of them rotated by ``degrees[0]``, and so on; names get ``'@<degrees>'``.
  """
  degrees = rotations_lib.check_rotations(degrees)
  drawings, names = [data.drawings], list(data.names)
  for d in degrees:
    cos, sin = np.round(np.cos(np.deg2rad(d))), np.round(np.sin(np.deg2rad(d)))
    dx, dy, pen_up = data.drawings[..., 0], data.drawings[..., 1], data.drawings[..., 2]
    drawings.append(np.stack([cos * dx - sin * dy, sin * dx + cos * dy, pen_up], -1).astype(np.float32))
    names += [f'{name}@{d}' for name in data.names]
  return Strokes(np.concatenate(drawings), tuple(names))


def split_characters(data: Strokes, *, seed: int, val_fraction: float = 0.15,
                     test_fraction: float = 0.15) -> dict[str, Strokes]:
  """Splits classes (characters) into disjoint meta-train / val / test sets.

  Args:
    data: from ``load_strokes``.
    seed: seeds the permutation of characters.
    val_fraction: share of characters for ``'val'`` (rounded down).
    test_fraction: share of characters for ``'test'`` (rounded down).

  Returns:
    ``{'train': Strokes, 'val': Strokes, 'test': Strokes}``; each keeps its
    characters in the original (sorted) order.
  """
  if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
    raise ValueError(f'val_fraction={val_fraction} and test_fraction={test_fraction} must be '
                     '>= 0 and sum to less than 1.')
  num_classes = len(data.names)
  order = np.random.default_rng(seed).permutation(num_classes)
  num_val, num_test = int(num_classes * val_fraction), int(num_classes * test_fraction)
  parts = {'val': order[:num_val], 'test': order[num_val:num_val + num_test],
           'train': order[num_val + num_test:]}
  out = {}
  for split, indices in parts.items():
    indices = np.sort(indices)
    out[split] = Strokes(data.drawings[indices], tuple(data.names[i] for i in indices))
  return {name: out[name] for name in ('train', 'val', 'test')}

