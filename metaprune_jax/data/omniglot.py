"""Omniglot: read the published archives, preprocess once, cache, split.

Two ways in:

1. **Published files (default; needs only numpy + Pillow, no network).** Put
   the archives from https://github.com/brendenlake/omniglot (folder
   ``python/``) into one folder and pass it as ``data_dir`` (launcher flag
   ``--config.data_dir=/path/to/omniglot``)::

     data_dir/images_background_small1.zip   # or its extracted folder
     data_dir/images_background_small2.zip   # images_background_small2/<alphabet>/<character>/*.png
     data_dir/images_background.zip          # optional: the full set
     data_dir/images_evaluation.zip          #   (964 + 659 characters)

   Every ``images_*.zip`` and extracted ``images_*/`` folder there is read (a
   folder wins over a zip with the same name); ``data_dir`` may also be one
   extracted folder itself (``data_dir/<alphabet>/<character>/*.png``). A
   character (alphabet, character folder) found in several sources is kept
   once: small1 + small2 share Greek and Latin, so the two give 8 alphabets and
   242 characters x 20 drawers (small1: 5 alphabets / 136 characters, small2:
   5 / 156, 50 shared).

2. **tensorflow-datasets** (:func:`load_from_tfds`; tfds 4.9). ``tfds.load`` /
   ``tfds.as_numpy`` read through ``tf.data`` and so need TensorFlow.
   ``tfds.data_source`` / ``builder.as_data_source`` read ArrayRecord files
   with NumPy only (``pip install tensorflow-datasets array_record``; images
   are decoded with OpenCV, else Pillow), but the files must first be written
   by ``download_and_prepare`` with ``file_format='array_record'``, and that
   step still needs TensorFlow (the ``omniglot`` builder lists files with
   ``tf.io.gfile``) plus network access. So: prepare once on a machine with
   TensorFlow (``load_from_tfds(..., download=True)``), copy the tfds
   ``data_dir``, then read it anywhere without TensorFlow. Splits: ``train``
   (background, 964 characters), ``test`` (evaluation, 659), ``small1``,
   ``small2``; images are ``(105, 105, 3)`` uint8 PNGs.

Preprocessing (:func:`preprocess_image`, shared with
``data/episode_folders.py``): grey-scale, Lanczos resize to
``image_size x image_size`` (default 28), inverted so strokes are 1.0 and the
background 0.0 (Omniglot PNGs are black strokes on white), stored as uint8
(255 = stroke) and turned into float32 by :func:`to_float`.
"""

import collections
import glob
import hashlib
import io
import json
import os
import tempfile
import time
import zipfile
import zlib
from typing import NamedTuple, Optional, Sequence, Union

from absl import logging
import numpy as np
from PIL import Image

from metaprune_jax.data import rotations as rotations_lib

_CACHE_FORMAT = 1
_DATA_DIR_HELP = (
    'Set config.data_dir (flag --config.data_dir=/path/to/omniglot) to a folder'
    ' holding images_background_small1.zip and images_background_small2.zip'
    ' (and/or images_background.zip, images_evaluation.zip) from'
    ' https://github.com/brendenlake/omniglot/tree/master/python, or their'
    ' extracted images_*/<alphabet>/<character>/*.png folders; in this'
    ' project checkout they are in ../shared/data/omniglot. Or use the'
    ' tensorflow-datasets path: metaprune_jax.data.omniglot.load_from_tfds.')


class OmniglotDataset(NamedTuple):
  """Omniglot images grouped by class (a character, possibly rotated).

  Attributes:
    images: ``[classes, drawers, H, W, 1]``, float32 in [0, 1] or uint8 in
      [0, 255]; strokes high, background 0.
    alphabets: ``[classes]`` str, the alphabet folder of each class.
    characters: ``[classes]`` str, the character folder (``character01``...).
    rotations: ``[classes]`` int32, degrees the class was rotated (0, 90, ...).
  """
  images: np.ndarray
  alphabets: np.ndarray
  characters: np.ndarray
  rotations: np.ndarray


class OmniglotSplits(NamedTuple):
  """Meta-train / meta-validation / meta-test datasets (disjoint characters)."""
  train: OmniglotDataset
  validation: OmniglotDataset
  test: OmniglotDataset


def preprocess_image(image: Image.Image, image_size: int) -> np.ndarray:
  """One image -> ``[image_size, image_size, 1]`` uint8, 255 = stroke.

  Transparent pixels count as white paper; the input must show dark strokes on
  a light background, like the Omniglot PNGs.
  """
  if image.mode in ('RGBA', 'LA', 'PA') or 'transparency' in image.info:
    rgba = image.convert('RGBA')
    paper = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(paper, rgba)
  grey = image.convert('L').resize((image_size, image_size), Image.LANCZOS)
  return (255 - np.asarray(grey, dtype=np.uint8))[..., None]


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 images (255 = stroke) -> float32 in [0, 1] (1.0 = stroke)."""
  return np.asarray(images, dtype=np.float32) / np.float32(255.0)


class _Source(NamedTuple):
  path: str
  is_zip: bool
  files: dict  # (alphabet, character) -> sorted member names / file paths.


def _check_image_size(image_size):
  if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
    raise ValueError(f'image_size must be a positive int (pixels per side), got {image_size!r}.')


def _add_file(files, rel_parts, name):
  if len(rel_parts) < 3 or not rel_parts[-1].lower().endswith('.png'):
    return
  if any(p.startswith('.') or p == '__MACOSX' for p in rel_parts):
    return
  files.setdefault((rel_parts[-3], rel_parts[-2]), []).append(name)


def _index_zip(path: str) -> _Source:
  files = {}
  try:
    with zipfile.ZipFile(path) as archive:
      for name in archive.namelist():
        _add_file(files, name.split('/'), name)
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise ValueError(
        f'{path} is not a readable zip archive ({e}): it is corrupt or truncated.'
        f' Download it again or delete it. {_DATA_DIR_HELP}') from e
  return _Source(path, True, {k: sorted(v) for k, v in files.items()})


def _index_dir(path: str) -> _Source:
  files = {}
  for root, dirs, names in os.walk(path):
    dirs.sort()
    rel = os.path.relpath(root, path).split(os.sep)
    for name in names:
      _add_file(files, rel + [name], os.path.join(root, name))
  return _Source(path, False, {k: sorted(v) for k, v in files.items()})


def _find_sources(data_dir, sources: Optional[Sequence[str]]) -> list[_Source]:
  """Indexes the zips / folders in ``data_dir`` (sorted by name)."""
  if not data_dir or not os.path.isdir(data_dir):
    raise FileNotFoundError(f'Omniglot data_dir {data_dir!r} is not a folder. {_DATA_DIR_HELP}')
  found = {}
  for entry in sorted(os.listdir(data_dir)):
    full = os.path.join(data_dir, entry)
    if entry.startswith('images_') and os.path.isdir(full):
      found[entry] = full
    elif entry.startswith('images_') and entry.endswith('.zip') and os.path.isfile(full):
      found.setdefault(entry[:-len('.zip')], full)  # An extracted folder wins.
  if sources is not None:
    missing = [s for s in sources if s not in found]
    if missing:
      raise FileNotFoundError(
          f'sources {missing} not found in data_dir {data_dir!r} (found: {sorted(found)}).'
          f' {_DATA_DIR_HELP}')
    found = {s: found[s] for s in sources}
  indexed = [_index_zip(p) if p.endswith('.zip') else _index_dir(p) for p in found.values()]
  if sources is None and not found:  # data_dir may be one extracted folder itself.
    files = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(data_dir), '*', '*', '*'))):
      _add_file(files, os.path.relpath(path, data_dir).split(os.sep), path)
    indexed = [_Source(data_dir, False, files)]
  indexed = [s for s in indexed if s.files]
  if not indexed:
    raise FileNotFoundError(
        f'No Omniglot images found in data_dir {data_dir!r} (contents:'
        f' {sorted(os.listdir(data_dir))[:10]}). {_DATA_DIR_HELP}')
  return indexed


def _select(srcs: list[_Source], max_characters_per_alphabet: Optional[int]) -> list[tuple]:
  """-> sorted ``[(alphabet, character, source_index, files)]``, one per character."""
  chosen = {}
  for i, src in enumerate(srcs):
    for key, names in src.files.items():
      chosen.setdefault(key, (i, names))  # First source wins; duplicates dropped.
  rows = [(a, c, i, names) for (a, c), (i, names) in sorted(chosen.items())]
  if max_characters_per_alphabet is not None:
    if max_characters_per_alphabet < 1:
      raise ValueError(f'max_characters_per_alphabet must be >= 1 or None, got {max_characters_per_alphabet}.')
    per_alphabet = {}
    kept = []
    for row in rows:
      per_alphabet[row[0]] = per_alphabet.get(row[0], 0) + 1
      if per_alphabet[row[0]] <= max_characters_per_alphabet:
        kept.append(row)
    rows = kept
  counts = collections.Counter(len(r[3]) for r in rows)
  if len(counts) > 1:
    usual = counts.most_common(1)[0][0]
    bad = [f'{srcs[i].path}:{a}/{c} has {len(n)}' for a, c, i, n in rows if len(n) != usual][:5]
    raise ValueError(
        f'Omniglot characters should all have {usual} drawer images, but {bad}; an archive'
        f' or folder in data_dir is incomplete. {_DATA_DIR_HELP}')
  return rows


def list_characters(data_dir: str, *, sources: Optional[Sequence[str]] = None) -> list[tuple[str, str]]:
  """The de-duplicated, sorted ``(alphabet, character)`` pairs in ``data_dir``; decodes nothing."""
  return [(a, c) for a, c, _, _ in _select(_find_sources(data_dir, sources), None)]


def _fingerprint(srcs, rows, image_size, max_characters_per_alphabet) -> str:
  """Cache key over the source file contents / stats and the settings."""
  digest = hashlib.sha256()
  digest.update(json.dumps([_CACHE_FORMAT, image_size, max_characters_per_alphabet]).encode())
  for src in srcs:
    digest.update(os.path.basename(src.path).encode())
    if src.is_zip:
      with open(src.path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
          digest.update(chunk)
  for alphabet, character, i, names in rows:
    digest.update(f'{alphabet}/{character}/{i}'.encode())
    for name in names:
      if srcs[i].is_zip:
        digest.update(name.encode())
      else:
        stat = os.stat(name)
        digest.update(f'{os.path.relpath(name, srcs[i].path)}:{stat.st_size}:{stat.st_mtime_ns}'.encode())
  return digest.hexdigest()


def _decode_classes(srcs: list[_Source], rows: list[tuple], image_size: int) -> np.ndarray:
  """Decodes the selected characters -> ``[classes, drawers, S, S, 1]`` uint8."""
  archives = {}
  try:
    out = None
    for k, (_, _, i, names) in enumerate(rows):
      src = srcs[i]
      for d, name in enumerate(names):
        where = f'{src.path}:{name}' if src.is_zip else name
        try:
          if src.is_zip:
            if src.path not in archives:
              archives[src.path] = zipfile.ZipFile(src.path)
            data = archives[src.path].read(name)
          else:
            with open(name, 'rb') as f:
              data = f.read()
          with Image.open(io.BytesIO(data)) as image:
            pixels = preprocess_image(image, image_size)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
          raise ValueError(f'Cannot read Omniglot image {where} ({e}); re-download or re-extract it.') from e
        if out is None:
          out = np.zeros((len(rows), len(names)) + pixels.shape, np.uint8)
        out[k, d] = pixels
  finally:
    for archive in archives.values():
      archive.close()
  if out is None:
    return np.zeros((0, 0, image_size, image_size, 1), np.uint8)
  return out


def _read_cache(path: str, key: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as data:
      if str(data['key']) != key:
        return None
      return {name: data[name] for name in ('images', 'alphabets', 'characters')}
  except Exception as e:  # pylint: disable=broad-except
    logging.warning('Ignoring unreadable Omniglot cache %s (%s); rebuilding it.', path, e)
    return None


def _write_cache(path: str, key: str, arrays: dict) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=os.path.dirname(path) or '.', suffix='.tmp', delete=False) as f:
    np.savez(f, key=np.array(key), **arrays)
  os.replace(f.name, path)  # Atomic: readers never see a half-written file.


def _finish(images: np.ndarray, alphabets, characters, dtype: str) -> OmniglotDataset:
  if dtype not in ('float32', 'uint8'):
    raise ValueError(f"dtype must be 'float32' or 'uint8', got {dtype!r}.")
  return OmniglotDataset(
      images=to_float(images) if dtype == 'float32' else images,
      alphabets=np.asarray(alphabets, dtype=str),
      characters=np.asarray(characters, dtype=str),
      rotations=np.zeros(len(alphabets), np.int32))


def load_omniglot(
    data_dir: str,
    *,
    image_size: int = 28,
    cache_dir: Optional[str] = None,
    dtype: str = 'float32',
    max_characters_per_alphabet: Optional[int] = None,
    sources: Optional[Sequence[str]] = None,
) -> OmniglotDataset:
  """Loads Omniglot from its published zips / folders (see module docstring).

  Args:
    data_dir: folder with ``images_*.zip`` archives and/or extracted folders.
    image_size: side of the square output images (105 -> ``image_size``).
    cache_dir: if set, the decoded uint8 array is cached there as ``.npz``,
      keyed by the source files (zip contents; folder file sizes and mtimes),
      ``image_size`` and ``max_characters_per_alphabet``; None disables it.
    dtype: ``'float32'`` (values in [0, 1]) or ``'uint8'`` ([0, 255]).
    max_characters_per_alphabet: keep only the first N characters (sorted) of
      each alphabet, e.g. for fast tests; None keeps all.
    sources: names such as ``('images_background_small1',)`` to read only
      those zips / folders; None reads every ``images_*`` in ``data_dir``.

  Returns:
    ``OmniglotDataset`` with images ``[characters, 20, image_size, image_size, 1]``
    sorted by (alphabet, character); all rotations 0.
  """
  _check_image_size(image_size)
  srcs = _find_sources(data_dir, sources)
  rows = _select(srcs, max_characters_per_alphabet)
  alphabets = [r[0] for r in rows]
  characters = [r[1] for r in rows]
  cache_path = key = None
  if cache_dir:
    key = _fingerprint(srcs, rows, int(image_size), max_characters_per_alphabet)
    cache_path = os.path.join(cache_dir, f'omniglot_{image_size}px_{key[:16]}.npz')
    cached = _read_cache(cache_path, key)
    if cached is not None:
      logging.info('Omniglot: cache hit %s', cache_path)
      return _finish(cached['images'], cached['alphabets'], cached['characters'], dtype)
  start = time.perf_counter()
  images = _decode_classes(srcs, rows, int(image_size))
  logging.info('Omniglot: decoded %d characters x %d drawers from %s in %.2f s.',
               images.shape[0], images.shape[1], [os.path.basename(s.path) for s in srcs],
               time.perf_counter() - start)
  if cache_path:
    _write_cache(cache_path, key, {'images': images, 'alphabets': np.asarray(alphabets, str),
                                   'characters': np.asarray(characters, str)})
  return _finish(images, alphabets, characters, dtype)


def _subset(dataset: OmniglotDataset, keep: np.ndarray) -> OmniglotDataset:
  return OmniglotDataset(*(field[keep] for field in dataset))


def rotate_classes(dataset: OmniglotDataset, degrees: Sequence[int] = rotations_lib.ROTATIONS) -> OmniglotDataset:
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
  return OmniglotDataset(*(np.concatenate(fields) for fields in zip(*parts)))


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
    dataset: OmniglotDataset,
    *,
    sizes: Sequence[Union[int, float]] = (0.7, 0.15, 0.15),
    by: str = 'character',
    seed: int = 0,
    rotations: Sequence[int] = (),
) -> OmniglotSplits:
  """Splits into meta-train / validation / test, disjoint by character or alphabet.

  Args:
    dataset: an unrotated ``OmniglotDataset`` (one class per character).
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


def load_from_tfds(
    split: Union[str, Sequence[str]],
    data_dir: Optional[str] = None,
    image_size: int = 28,
    *,
    dtype: str = 'float32',
    download: bool = False,
) -> OmniglotDataset:
  """Loads Omniglot through tensorflow-datasets' ArrayRecord data source.

  Reading needs ``tensorflow-datasets>=4.9`` and ``array_record`` but not
  TensorFlow; ``download=True`` (``download_and_prepare``) needs TensorFlow
  and network access (see the module docstring). Drawer order within a class
  follows the record order, not the file names.

  Args:
    split: tfds split name(s): ``'train'``, ``'test'``, ``'small1'``,
      ``'small2'``; several are merged with duplicates dropped.
    data_dir: tfds data folder (None: tfds default, ``~/tensorflow_datasets``).
    image_size: side of the square output images.
    dtype: ``'float32'`` or ``'uint8'``.
    download: run ``download_and_prepare`` first (off by default).

  Returns:
    ``OmniglotDataset`` as from :func:`load_omniglot`.
  """
  _check_image_size(image_size)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        'load_from_tfds needs tensorflow-datasets>=4.9 and array_record'
        ' (pip install tensorflow-datasets array_record); preparing the data'
        ' (download=True) also needs tensorflow. The default path needs neither:'
        f' load_omniglot(data_dir). {_DATA_DIR_HELP}') from e
  builder = tfds.builder('omniglot', data_dir=data_dir, file_format='array_record')
  if download:
    builder.download_and_prepare()
  features = builder.info.features
  alphabet_names = features['alphabet'].names
  groups = {}
  for name in ([split] if isinstance(split, str) else list(split)):
    try:
      source = builder.as_data_source(split=name)
    except Exception as e:  # pylint: disable=broad-except
      raise FileNotFoundError(
          f'tfds omniglot split {name!r} is not prepared as array_record in data_dir'
          f' {data_dir!r} ({e}). Run load_from_tfds(..., download=True) once on a machine'
          f' with tensorflow, or use load_omniglot. {_DATA_DIR_HELP}') from e
    seen_here = set()
    for index in range(len(source)):
      example = source[index]
      key = (alphabet_names[int(example['alphabet'])], f"character{int(example['alphabet_char_id']) + 1:02d}")
      if key in groups and key not in seen_here:
        continue  # Already read from an earlier split.
      seen_here.add(key)
      pixels = preprocess_image(Image.fromarray(np.asarray(example['image'], np.uint8)), image_size)
      groups.setdefault(key, []).append(pixels)
  keys = sorted(groups)
  counts = {len(groups[k]) for k in keys}
  if len(counts) != 1:
    raise ValueError(f'tfds omniglot split {split!r}: uneven drawers per character {sorted(counts)}.')
  images = np.stack([np.stack(groups[k]) for k in keys])
  return _finish(images, [k[0] for k in keys], [k[1] for k in keys], dtype)
