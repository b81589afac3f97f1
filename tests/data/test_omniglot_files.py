"""Tests for metaprune_jax.data.omniglot_files on small subsets of the real archives."""

import os
import zipfile

import numpy as np
import pytest

from metaprune_jax.data import omniglot
from metaprune_jax.data import omniglot_files
from tests import test_utils
from tests.data import omniglot_subset


@omniglot_subset.needs_data
def test_character_counts_on_shared_data():
  def characters(sources=None):
    data = omniglot_files.load_omniglot(omniglot_subset.SHARED, image_size=4, dtype='uint8', sources=sources)
    assert data.images.shape[1:] == (20, 4, 4, 1)
    return list(zip(data.alphabets.tolist(), data.characters.tolist()))
  chars = characters()
  assert len(chars) == 242
  assert len({a for a, _ in chars}) == 8
  assert len(characters(['images_background_small1'])) == 136
  assert len(characters(['images_background_small2'])) == 156
  assert chars == sorted(set(chars))


def test_load_omniglot_dedups_and_returns_class_grouped_images(subset):
  assert subset.images.shape == (10, 20, 12, 12, 1) and subset.images.dtype == np.float32
  pairs = list(zip(subset.alphabets, subset.characters))
  assert pairs == sorted(set(pairs))  # Greek/character02 kept once.
  assert [p for p in pairs if p[0] == 'Greek'] == [('Greek', f'character0{i}') for i in (1, 2, 3)]
  test_utils.assert_equal(subset.rotations, np.zeros(10))
  # Distinct characters have distinct images.
  assert len(omniglot_subset.image_hashes(subset.images)) == 200


def test_load_omniglot_strokes_are_one_and_background_zero(subset):
  images = subset.images
  assert images.min() == 0.0 and images.max() == 1.0
  assert images.mean() < 0.25  # Mostly background: strokes are thin.
  assert np.mean(images == 0.0) > 0.5  # Paper is exactly 0.
  assert np.mean(images[:, :, 3:-3, 3:-3]) > np.mean(images[:, :, :2])  # Ink sits mid-image.


def test_zip_and_extracted_folder_give_the_same_arrays(zip_dir, subset, tmp_path):
  for name in sorted(os.listdir(zip_dir)):
    with zipfile.ZipFile(os.path.join(zip_dir, name)) as archive:
      archive.extractall(tmp_path)
  assert sorted(os.listdir(tmp_path)) == ['images_background_small1', 'images_background_small2']
  test_utils.assert_trees_all_equal(omniglot_files.load_omniglot(str(tmp_path), image_size=12), subset)
  # data_dir may also be a single extracted folder.
  single = omniglot_files.load_omniglot(str(tmp_path / 'images_background_small1'), image_size=12)
  test_utils.assert_equal(single.alphabets, ['Greek'] * 2 + ['Korean'] * 3)
  test_utils.assert_equal(single.images, subset.images[[0, 1, 3, 4, 5]])


def test_load_omniglot_options(zip_dir, subset):
  small = omniglot_files.load_omniglot(zip_dir, image_size=12, max_characters_per_alphabet=1, dtype='uint8')
  test_utils.assert_equal(small.characters, ['character01'] * 4)
  assert small.images.dtype == np.uint8
  keep = [list(zip(subset.alphabets, subset.characters)).index(p) for p in zip(small.alphabets, small.characters)]
  test_utils.assert_equal(omniglot.to_float(small.images), subset.images[keep])
  only2 = omniglot_files.load_omniglot(zip_dir, image_size=12, sources=['images_background_small2'])
  assert sorted(set(only2.alphabets)) == ['Greek', 'Sanskrit', 'Tagalog']
  with pytest.raises(ValueError, match='image_size'):
    omniglot_files.load_omniglot(zip_dir, image_size=0)


def test_cache_is_used_and_invalidated_by_image_size_and_sources(zip_dir, tmp_path, monkeypatch):
  calls = []
  decode = omniglot_files._decode_classes
  monkeypatch.setattr(omniglot_files, '_decode_classes', lambda *a: calls.append(a[2]) or decode(*a))
  cache = str(tmp_path / 'cache')
  first = omniglot_files.load_omniglot(zip_dir, image_size=12, cache_dir=cache)
  assert calls == [12] and len(os.listdir(cache)) == 1
  second = omniglot_files.load_omniglot(zip_dir, image_size=12, cache_dir=cache)
  assert calls == [12], 'cache hit must not decode'
  test_utils.assert_trees_all_equal(second, first)
  third = omniglot_files.load_omniglot(zip_dir, image_size=10, cache_dir=cache)
  assert calls == [12, 10] and third.images.shape[2:] == (10, 10, 1)
  # A changed archive (same name) gives a new key: no stale cache.
  data = str(tmp_path / 'data')
  os.makedirs(data)
  omniglot_subset.write_subset_zip(data, 'images_background_small1', omniglot_subset.SMALL1, {'Greek': ('character01',)})
  assert omniglot_files.load_omniglot(data, image_size=12, cache_dir=cache).images.shape[0] == 1
  omniglot_subset.write_subset_zip(data, 'images_background_small1', omniglot_subset.SMALL1, {'Greek': ('character01', 'character02')})
  assert omniglot_files.load_omniglot(data, image_size=12, cache_dir=cache).images.shape[0] == 2
  assert calls == [12, 10, 12, 12]


def test_corrupt_cache_file_is_rebuilt(zip_dir, tmp_path):
  cache = str(tmp_path)
  reference = omniglot_files.load_omniglot(zip_dir, image_size=12, cache_dir=cache, max_characters_per_alphabet=1)
  (path,) = [os.path.join(cache, f) for f in os.listdir(cache)]
  with open(path, 'wb') as f:
    f.write(b'garbage')
  again = omniglot_files.load_omniglot(zip_dir, image_size=12, cache_dir=cache, max_characters_per_alphabet=1)
  test_utils.assert_trees_all_equal(again, reference)


def test_missing_data_dir_error_names_the_config_field(tmp_path):
  with pytest.raises(FileNotFoundError, match='config.data_dir') as missing:
    omniglot_files.load_omniglot(str(tmp_path / 'nowhere'))
  assert 'images_background_small1.zip' in str(missing.value)
  (tmp_path / 'notes.txt').write_text('no data here')
  with pytest.raises(FileNotFoundError, match='data_dir') as empty:
    omniglot_files.load_omniglot(str(tmp_path))
  assert 'load_from_tfds' in str(empty.value)
  with pytest.raises(FileNotFoundError, match='images_evaluation'):
    omniglot_files.load_omniglot(str(tmp_path), sources=['images_evaluation'])


def test_corrupt_archive_error_names_the_file(zip_dir, tmp_path):
  bad = tmp_path / 'images_background_small1.zip'
  bad.write_bytes(b'this is not a zip file')
  with pytest.raises(ValueError, match='images_background_small1.zip'):
    omniglot_files.load_omniglot(str(tmp_path))
  data = open(os.path.join(zip_dir, 'images_background_small2.zip'), 'rb').read()
  truncated = tmp_path / 'images_background_small2.zip'
  truncated.write_bytes(data[:len(data) // 2])
  bad.unlink()
  with pytest.raises(ValueError, match='images_background_small2.zip'):
    omniglot_files.load_omniglot(str(tmp_path))


def test_uneven_drawers_error(zip_dir, tmp_path):
  for name in sorted(os.listdir(zip_dir)):
    with zipfile.ZipFile(os.path.join(zip_dir, name)) as archive:
      archive.extractall(tmp_path)
  char_dir = tmp_path / 'images_background_small1' / 'Korean' / 'character01'
  os.remove(char_dir / sorted(os.listdir(char_dir))[0])
  with pytest.raises(ValueError, match='Korean/character01 has 19'):
    omniglot_files.load_omniglot(str(tmp_path), image_size=8)
