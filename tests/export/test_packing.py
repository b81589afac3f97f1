"""Packing a sparse array is exact, picks the cheaper format and counts its bytes right."""

import math

import numpy as np
import pytest

from metaprune_jax.export import packing
from tests import test_utils


def _random_case(rng: np.random.Generator, shape: tuple[int, ...], density: float, dtype=np.float32):
  if np.dtype(dtype).kind == 'i':
    values = rng.integers(-127, 128, size=shape).astype(dtype)
  else:
    values = rng.standard_normal(shape).astype(dtype)
  pattern = rng.random(shape) < density
  return values, pattern


def _assert_bit_exact(packed: packing.PackedArray, values: np.ndarray, pattern: np.ndarray):
  dense = packing.unpack(packed)
  assert dense.shape == values.shape and dense.dtype == values.dtype
  expected = np.where(pattern, values, np.zeros((), values.dtype))
  uint = np.dtype(f'u{values.dtype.itemsize}')
  test_utils.assert_equal(dense.view(uint), expected.view(uint))


@pytest.mark.parametrize('shape', [(7,), (40, 40), (3, 3, 64, 64), (1, 1), (5, 1, 3)])
@pytest.mark.parametrize('density', [0.0, 0.01, 0.1, 0.5, 1.0])
def test_round_trip_is_bit_exact(shape, density):
  values, pattern = _random_case(np.random.default_rng(0), shape, density)
  _assert_bit_exact(packing.pack(values, pattern), values, pattern)


@pytest.mark.parametrize('shape', [(0,), (0, 5), (3, 0, 2)])
def test_empty_arrays_round_trip(shape):
  values = np.zeros(shape, np.float32)
  packed = packing.pack(values, np.zeros(shape, bool))
  assert packing.packed_nbytes(packed) == 0 and packing.dense_nbytes(packed) == 0
  dense = packing.unpack(packed)
  assert dense.shape == shape and dense.dtype == np.float32


def test_int8_values_keep_their_dtype():
  values, pattern = _random_case(np.random.default_rng(1), (64, 5), 0.3, np.int8)
  packed = packing.pack(values, pattern)
  assert packed.values.dtype == np.int8
  _assert_bit_exact(packed, values, pattern)


def test_special_floats_inside_the_pattern_survive():
  values = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, 3.0], np.float32)
  values[0] = np.frombuffer(np.uint32(0x7fc00123).tobytes(), np.float32)[0]  # A NaN with a payload.
  pattern = np.array([1, 1, 1, 1, 1, 0], bool)
  _assert_bit_exact(packing.pack(values, pattern), values, pattern)


def test_entries_outside_the_pattern_unpack_as_zero():
  values = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
  pattern = np.eye(3, 4, dtype=bool)
  test_utils.assert_equal(packing.unpack(packing.pack(values, pattern)), np.where(pattern, values, 0))


def test_zeros_inside_the_pattern_are_kept():
  values = np.zeros((4, 4), np.float32)
  packed = packing.pack(values, np.ones((4, 4), bool))
  assert packed.values.size == 16


def test_zero_one_patterns_equal_bool_patterns():
  values, pattern = _random_case(np.random.default_rng(2), (10, 10), 0.4)
  for as_numbers in (pattern.astype(np.int32), pattern.astype(np.float32)):
    packed = packing.pack(values, as_numbers)
    test_utils.assert_equal(packing.unpack(packed), packing.unpack(packing.pack(values, pattern)))


def test_dense_pattern_uses_the_bitmask():
  values, pattern = _random_case(np.random.default_rng(3), (40, 40), 0.1)
  packed = packing.pack(values, pattern)
  assert packed.format == 'bitmask'
  assert packed.positions.dtype == np.uint8 and packed.positions.shape == (200,)


@pytest.mark.parametrize('shape,index_dtype', [((16, 16), np.uint8), ((40, 40), np.uint16),
                                               ((256, 257), np.uint32)])
def test_very_sparse_pattern_uses_indices_of_the_smallest_dtype(shape, index_dtype):
  values = np.ones(shape, np.float32)
  pattern = np.zeros(shape, bool)
  pattern.reshape(-1)[[0, 5, math.prod(shape) - 1]] = True
  packed = packing.pack(values, pattern)
  assert packed.format == 'indices' and packed.positions.dtype == index_dtype
  test_utils.assert_equal(packed.positions, [0, 5, math.prod(shape) - 1])
  _assert_bit_exact(packed, values, pattern)


def test_format_switches_where_the_byte_counts_cross():
  # 40x40 = 1600 entries: bitmask 200 bytes; uint16 indices 2 bytes each, so indices win below 100 kept.
  values = np.ones((40, 40), np.float32)
  for num_kept, expected in ((99, 'indices'), (100, 'bitmask'), (101, 'bitmask')):
    pattern = np.zeros(1600, bool)
    pattern[:num_kept] = True
    assert packing.pack(values, pattern.reshape(40, 40)).format == expected


def test_nbytes_formulas():
  values, pattern = _random_case(np.random.default_rng(4), (576, 64), 0.2)
  packed = packing.pack(values, pattern)
  k = int(pattern.sum())
  assert packing.packed_nbytes(packed) == math.ceil(576 * 64 / 8) + 4 * k
  assert packing.dense_nbytes(packed) == 576 * 64 * 4
  sparse = packing.pack(values, np.eye(576, 64, dtype=bool))
  assert packing.packed_nbytes(sparse) == 64 * 2 + 64 * 4  # uint16 indices + float32 values.
  assert packing.bitmask_nbytes(9) == 2 and packing.indices_nbytes(256, 3) == 3
  assert packing.indices_nbytes(257, 3) == 6


def test_property_random_cases_round_trip_in_the_cheaper_format():
  rng = np.random.default_rng(5)
  for _ in range(300):
    shape = tuple(int(d) for d in rng.integers(0, 9, size=rng.integers(1, 4)))
    density = float(rng.choice([0.0, 1.0, rng.random(), rng.random() ** 4]))
    dtype = rng.choice([np.float32, np.int8, np.float16])
    values, pattern = _random_case(rng, shape, density, dtype)
    packed = packing.pack(values, pattern)
    _assert_bit_exact(packed, values, pattern)
    size, k = math.prod(shape), int(pattern.sum())
    cheapest = min(packing.bitmask_nbytes(size), packing.indices_nbytes(size, k)) if size else 0
    assert packing.packed_nbytes(packed) == cheapest + k * np.dtype(dtype).itemsize


def test_bad_inputs_name_the_problem():
  values = np.ones((3, 4), np.float32)
  with pytest.raises(ValueError, match='same shape'):
    packing.pack(values, np.ones((4, 3), bool))
  with pytest.raises(ValueError, match='other than 0 and 1'):
    packing.pack(values, np.full((3, 4), 2))
  with pytest.raises(ValueError, match='numeric'):
    packing.pack(np.array(['a']), np.array([True]))
  packed = packing.pack(values, np.ones((3, 4), bool))
  with pytest.raises(ValueError, match='unknown packed format'):
    packing.unpack(packed._replace(format='csr'))
  with pytest.raises(ValueError, match='12 entries but 11'):
    packing.unpack(packed._replace(values=packed.values[:11]))
  with pytest.raises(ValueError, match='uint8\\[2\\]'):
    packing.unpack(packed._replace(positions=packed.positions[:1]))
  sparse = packing.pack(np.ones(1000, np.float32), np.arange(1000) < 3)
  with pytest.raises(ValueError, match='strictly increasing'):
    packing.unpack(sparse._replace(positions=sparse.positions[::-1].copy()))
  with pytest.raises(ValueError, match='strictly increasing and below 1000'):
    packing.unpack(sparse._replace(positions=np.array([0, 1, 1000], np.uint16)))
