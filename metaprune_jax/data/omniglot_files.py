"""Omniglot from the published zips / extracted folders, with an ``.npz`` cache.

Needs only numpy + Pillow, no network. Put the archives from
https://github.com/brendenlake/omniglot (folder ``python/``) into one folder
and pass it as ``data_dir`` (launcher flag
``--config.data_dir=/path/to/omniglot``)::

  data_dir/images_background_small1.zip   # or its extracted folder
  data_dir/images_background_small2.zip   # images_background_small2/<alphabet>/<character>/*.png
  data_dir/images_background.zip          # optional: the full set
  data_dir/images_evaluation.zip          #   (964 + 659 characters)

Every ``images_*.zip`` and extracted ``images_*/`` folder there is read (a
folder wins over a zip with the same name); ``data_dir`` may also be one
extracted folder itself (``data_dir/<alphabet>/<character>/*.png``). A
character (alphabet, character folder) found in several sources is kept once:
small1 + small2 share Greek and Latin, so the two give 8 alphabets and 242
characters x 20 drawers (small1: 5 alphabets / 136 characters, small2: 5 /
156, 50 shared). Images are preprocessed by ``omniglot.preprocess_image``. A
file that is not an image, or far larger than Omniglot's 105 x 105 PNGs (over
1024 pixels a side, read from its header before decoding, or over 8 MB), raises
a ``ValueError`` naming it.
"""

import collections
import glob
import hashlib
import io
import json
import os
import tempfile
import time
import warnings
import zipfile
import zlib
from typing import NamedTuple, Optional, Sequence

from absl import logging
import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from metaprune_jax.data import omniglot

_CACHE_FORMAT = 1
# Omniglot PNGs are 105 x 105 pixels, about 1 KB: a file or image far beyond these is damaged or foreign.
_MAX_IMAGE_BYTES = 8 << 20
_MAX_IMAGE_SIDE = 1024


class _Source(NamedTuple):
  path: str
  is_zip: bool
  files: dict  # (alphabet, character) -> sorted member names / file paths.


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
        f' Download it again or delete it. {omniglot.DATA_DIR_HELP}') from e
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
    raise FileNotFoundError(f'Omniglot data_dir {data_dir!r} is not a folder. {omniglot.DATA_DIR_HELP}')
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
          f' {omniglot.DATA_DIR_HELP}')
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
        f' {sorted(os.listdir(data_dir))[:10]}). {omniglot.DATA_DIR_HELP}')
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
        f' or folder in data_dir is incomplete. {omniglot.DATA_DIR_HELP}')
  return rows


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


def _check_file_size(num_bytes: int) -> None:
  if num_bytes > _MAX_IMAGE_BYTES:
    raise ValueError(f'{num_bytes} bytes, far larger than an Omniglot PNG (about 1 KB)')


def _decode_image(data: bytes, image_size: int) -> np.ndarray:
  """One PNG's bytes -> ``[image_size, image_size, 1]`` uint8 (``omniglot.preprocess_image``).

  An image far larger than Omniglot's 105 x 105 is refused from its header, before decoding (a damaged or foreign
  file must not exhaust memory).

  Raises:
    ValueError: the bytes are not an image, or the image has a side over ``_MAX_IMAGE_SIDE`` pixels.
  """
  with warnings.catch_warnings():
    warnings.simplefilter('error', Image.DecompressionBombWarning)
    try:
      image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
      raise ValueError(f'far larger than an Omniglot image (105x105): {e}') from None
    except UnidentifiedImageError:
      raise ValueError('not an image file') from None
  with image:
    width, height = image.size
    if max(width, height) > _MAX_IMAGE_SIDE:
      raise ValueError(f'{width}x{height} pixels, far larger than an Omniglot image (105x105)')
    return omniglot.preprocess_image(image, image_size)


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
            _check_file_size(archives[src.path].getinfo(name).file_size)
            data = archives[src.path].read(name)
          else:
            _check_file_size(os.path.getsize(name))
            with open(name, 'rb') as f:
              data = f.read()
          pixels = _decode_image(data, image_size)
        except PermissionError:
          raise
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


def load_omniglot(
    data_dir: str,
    *,
    image_size: int = 28,
    cache_dir: Optional[str] = None,
    dtype: str = 'float32',
    max_characters_per_alphabet: Optional[int] = None,
    sources: Optional[Sequence[str]] = None,
) -> omniglot.OmniglotDataset:
  """Loads Omniglot from its published zips / folders (see the module docstring).

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
  omniglot.check_image_size(image_size)
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
      return omniglot.make_dataset(cached['images'], cached['alphabets'], cached['characters'], dtype)
  start = time.perf_counter()
  images = _decode_classes(srcs, rows, int(image_size))
  logging.info('Omniglot: decoded %d characters x %d drawers from %s in %.2f s.',
               images.shape[0], images.shape[1], [os.path.basename(s.path) for s in srcs],
               time.perf_counter() - start)
  if cache_path:
    _write_cache(cache_path, key, {'images': images, 'alphabets': np.asarray(alphabets, str),
                                   'characters': np.asarray(characters, str)})
  return omniglot.make_dataset(images, alphabets, characters, dtype)
