"""Exact storage of a sparse array: a bitmask or an index list of the kept entries plus their values.

``pack(values, pattern)`` keeps the entries of ``values`` where ``pattern`` is true and picks, per array, the
cheaper of two position formats:

* ``'bitmask'``: ``np.packbits`` over the flattened pattern, ``ceil(n / 8)`` bytes;
* ``'indices'``: the sorted flat (row-major) indices of the kept entries in the smallest unsigned dtype that
  holds ``n - 1`` (uint8, uint16, uint32, uint64), ``k * itemsize`` bytes; cheaper only when very sparse.

Either way the kept values follow in row-major order in their own dtype (float32, int8, ...), so
``unpack(pack(values, pattern))`` equals ``values`` bit for bit inside the pattern (NaN payloads and -0.0
included) and is zero outside it. A ``PackedArray`` is two numpy arrays plus ``shape`` and ``format``: an
artefact writer stores the arrays and puts ``shape``, ``format`` and ``values.dtype`` in JSON.
"""

import math
from typing import NamedTuple

import numpy as np

FORMATS = ('bitmask', 'indices')


class PackedArray(NamedTuple):
  """A sparse array stored exactly.

  Attributes:
    positions: ``'bitmask'``: uint8 ``[ceil(n / 8)]``, the big-endian ``np.packbits`` of the flat pattern;
      ``'indices'``: uint8/16/32/64 ``[k]``, strictly increasing flat indices of the kept entries.
    values: ``[k]`` kept values in row-major order, in the dtype of the packed array.
    shape: the dense shape (``n = prod(shape)`` entries).
    format: ``'bitmask'`` or ``'indices'``.
  """
  positions: np.ndarray
  values: np.ndarray
  shape: tuple[int, ...]
  format: str


def index_dtype(size: int) -> np.dtype:
  """The smallest unsigned dtype that holds every flat index of an array of ``size`` entries."""
  for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
    if size - 1 <= np.iinfo(dtype).max:
      return np.dtype(dtype)
  raise ValueError(f'an array of {size} entries has flat indices beyond uint64; split it before packing')


def bitmask_nbytes(size: int) -> int:
  """Bytes of the bitmask of an array of ``size`` entries: ``ceil(size / 8)``."""
  return -(-size // 8)


def indices_nbytes(size: int, num_kept: int) -> int:
  """Bytes of the index list of ``num_kept`` entries of an array of ``size`` entries."""
  return num_kept * index_dtype(size).itemsize


def _check_pattern(values: np.ndarray, pattern: np.ndarray) -> np.ndarray:
  """``pattern`` as a bool array of ``values``' shape, or a ValueError naming what is wrong."""
  if pattern.shape != values.shape:
    raise ValueError(f'pattern has shape {pattern.shape} but values have shape {values.shape}; pass a pattern '
                     'of the same shape (True where an entry is kept)')
  if pattern.dtype == np.bool_:
    return pattern
  if not (np.issubdtype(pattern.dtype, np.integer) or np.issubdtype(pattern.dtype, np.floating)):
    raise ValueError(f'pattern has dtype {pattern.dtype}; pass a bool or {{0, 1}} array')
  if not np.all((pattern == 0) | (pattern == 1)):
    raise ValueError(f'pattern of dtype {pattern.dtype} holds values other than 0 and 1; pass a bool or '
                     '{0, 1} array (e.g. mask > 0)')
  return pattern.astype(bool)


def pack(values: np.ndarray, pattern: np.ndarray) -> PackedArray:
  """Packs the entries of ``values`` where ``pattern`` is true, in the cheaper position format.

  Args:
    values: ``[...]`` numeric array (numpy or jax); its dtype is kept.
    pattern: ``[...]`` bool or {0, 1} array of the same shape; true where an entry is kept. Entries outside
      it are dropped (they unpack as zeros); entries inside it are kept even when they are zero.

  Returns:
    A ``PackedArray``: ``'indices'`` when its bytes are strictly fewer than the bitmask's, else ``'bitmask'``.
  """
  values = np.asarray(values)
  if not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_):
    raise ValueError(f'values have dtype {values.dtype}; pack numeric arrays only')
  pattern = _check_pattern(values, np.asarray(pattern))
  flat_pattern = pattern.reshape(-1)
  kept = values.reshape(-1)[flat_pattern]  # A copy in row-major order; the bits are untouched.
  size, num_kept = flat_pattern.size, kept.size
  if indices_nbytes(size, num_kept) < bitmask_nbytes(size):
    positions = np.flatnonzero(flat_pattern).astype(index_dtype(size))
    return PackedArray(positions, kept, tuple(values.shape), 'indices')
  return PackedArray(np.packbits(flat_pattern), kept, tuple(values.shape), 'bitmask')


def unpack(packed: PackedArray) -> np.ndarray:
  """The dense array of ``packed``: its values inside the pattern, zeros outside.

  Raises:
    ValueError: the format is unknown or the arrays do not fit the shape (e.g. a damaged artefact file).
  """
  positions, values = np.asarray(packed.positions), np.asarray(packed.values)
  shape = tuple(int(d) for d in packed.shape)
  size = math.prod(shape)
  if values.ndim != 1:
    raise ValueError(f'packed values have shape {values.shape}; expected a flat [k] array')
  dense = np.zeros(size, values.dtype)
  if packed.format == 'bitmask':
    if positions.dtype != np.uint8 or positions.shape != (bitmask_nbytes(size),):
      raise ValueError(f'bitmask positions are {positions.dtype}{list(positions.shape)} but shape {shape} '
                       f'needs uint8[{bitmask_nbytes(size)}]')
    flat_pattern = np.unpackbits(positions, count=size).astype(bool)
    if int(flat_pattern.sum()) != values.size:
      raise ValueError(f'the bitmask keeps {int(flat_pattern.sum())} entries but {values.size} values are stored')
    dense[flat_pattern] = values
  elif packed.format == 'indices':
    if not np.issubdtype(positions.dtype, np.unsignedinteger) or positions.shape != values.shape:
      raise ValueError(f'index positions are {positions.dtype}{list(positions.shape)}; expected unsigned '
                       f'integers, one per stored value ({values.size})')
    if positions.size and (positions[-1] >= size or np.any(np.diff(positions.astype(np.int64)) <= 0)):
      raise ValueError(f'index positions must be strictly increasing and below {size} (shape {shape})')
    dense[positions] = values
  else:
    raise ValueError(f'unknown packed format {packed.format!r}; expected one of {FORMATS}')
  return dense.reshape(shape)


def packed_nbytes(packed: PackedArray) -> int:
  """Bytes of the arrays of ``packed`` (positions plus values); shape and format are metadata."""
  return int(np.asarray(packed.positions).nbytes + np.asarray(packed.values).nbytes)


def dense_nbytes(packed: PackedArray) -> int:
  """Bytes of the dense array ``packed`` stands for: ``prod(shape) * itemsize`` of its values' dtype."""
  return math.prod(packed.shape) * np.asarray(packed.values).dtype.itemsize
