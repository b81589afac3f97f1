"""Tests for metaprune_jax.data.omniglot on small subsets of the real archives."""

import hashlib
import os
import sys
import zipfile

import jax
import numpy as np
import pytest
from PIL import Image

from metaprune_jax.data import omniglot
from metaprune_jax.tasks import omniglot as omniglot_tasks
from tests import test_utils

from tests.shared_data import OMNIGLOT_DIR as SHARED
SMALL1 = os.path.join(SHARED, 'images_background_small1.zip')
SMALL2 = os.path.join(SHARED, 'images_background_small2.zip')
needs_data = pytest.mark.skipif(
    not (os.path.exists(SMALL1) and os.path.exists(SMALL2)), reason=f'Omniglot zips not in {SHARED}')

# (source zip, alphabet, characters) copied into the test archives; Greek
# character02 is in both, to check de-duplication.
SUBSET = {
    'images_background_small1': (SMALL1, {'Greek': ('character01', 'character02'),
                                          'Korean': ('character01', 'character02', 'character03')}),
    'images_background_small2': (SMALL2, {'Greek': ('character02', 'character03'),
                                          'Tagalog': ('character01', 'character02'),
                                          'Sanskrit': ('character01', 'character02')}),
}


def _write_subset_zip(dest_dir, top, source_zip, wanted):
  """Copies the PNGs of ``wanted`` {alphabet: characters} from ``source_zip``."""
  path = os.path.join(dest_dir, f'{top}.zip')
  with zipfile.ZipFile(source_zip) as src, zipfile.ZipFile(path, 'w') as dst:
    for name in src.namelist():
      parts = name.split('/')
      if len(parts) == 4 and parts[3].endswith('.png') and parts[2] in wanted.get(parts[1], ()):
        dst.writestr(f'{top}/{parts[1]}/{parts[2]}/{parts[3]}', src.read(name))
  return path


@pytest.fixture(scope='module')
def zip_dir(tmp_path_factory):
  if not (os.path.exists(SMALL1) and os.path.exists(SMALL2)):
    pytest.skip(f'Omniglot zips not in {SHARED}')
  root = str(tmp_path_factory.mktemp('omniglot_zips'))
  for top, (source, wanted) in SUBSET.items():
    _write_subset_zip(root, top, source, wanted)
  return root


@pytest.fixture(scope='module')
def subset(zip_dir):
  return omniglot.load_omniglot(zip_dir, image_size=12)


def _image_hashes(images):
  return {hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images.reshape((-1,) + images.shape[2:])}


@needs_data
def test_list_characters_counts_on_shared_data():
  chars = omniglot.list_characters(SHARED)
  assert len(chars) == 242
  assert len({a for a, _ in chars}) == 8
  assert len(omniglot.list_characters(SHARED, sources=['images_background_small1'])) == 136
  assert len(omniglot.list_characters(SHARED, sources=['images_background_small2'])) == 156
  assert chars == sorted(set(chars))


def test_load_omniglot_dedups_and_returns_class_grouped_images(subset):
  assert subset.images.shape == (10, 20, 12, 12, 1) and subset.images.dtype == np.float32
  pairs = list(zip(subset.alphabets, subset.characters))
  assert pairs == sorted(set(pairs))  # Greek/character02 kept once.
  assert [p for p in pairs if p[0] == 'Greek'] == [('Greek', f'character0{i}') for i in (1, 2, 3)]
  test_utils.assert_equal(subset.rotations, np.zeros(10))
  # Distinct characters have distinct images.
  assert len(_image_hashes(subset.images)) == 200


def test_load_omniglot_strokes_are_one_and_background_zero(subset):
  images = subset.images
  assert images.min() == 0.0 and images.max() == 1.0
  assert images.mean() < 0.25  # Mostly background: strokes are thin.
  assert np.mean(images == 0.0) > 0.5  # Paper is exactly 0.
  assert np.mean(images[:, :, 3:-3, 3:-3]) > np.mean(images[:, :, :2])  # Ink sits mid-image.


def test_preprocess_image_inverts_and_resizes():
  image = Image.new('L', (105, 105), 255)
  image.paste(0, (30, 30, 75, 75))  # Black square on white paper.
  out = omniglot.preprocess_image(image, 21)
  assert out.shape == (21, 21, 1) and out.dtype == np.uint8
  assert out[10, 10, 0] == 255 and out[0, 0, 0] == 0
  rgba = Image.new('RGBA', (40, 40), (0, 0, 0, 0))  # Transparent counts as paper.
  rgba.paste((0, 0, 0, 255), (10, 10, 30, 30))
  test_utils.assert_equal(omniglot.preprocess_image(rgba, 8)[[0, 4], [0, 4], 0], [0, 255])
  test_utils.assert_close(omniglot.to_float(out)[10, 10, 0], 1.0)


def test_zip_and_extracted_folder_give_the_same_arrays(zip_dir, subset, tmp_path):
  for name in sorted(os.listdir(zip_dir)):
    with zipfile.ZipFile(os.path.join(zip_dir, name)) as archive:
      archive.extractall(tmp_path)
  assert sorted(os.listdir(tmp_path)) == ['images_background_small1', 'images_background_small2']
  test_utils.assert_trees_all_equal(omniglot.load_omniglot(str(tmp_path), image_size=12), subset)
  # data_dir may also be a single extracted folder.
  single = omniglot.load_omniglot(str(tmp_path / 'images_background_small1'), image_size=12)
  test_utils.assert_equal(single.alphabets, ['Greek'] * 2 + ['Korean'] * 3)
  test_utils.assert_equal(single.images, subset.images[[0, 1, 3, 4, 5]])


def test_load_omniglot_options(zip_dir, subset):
  small = omniglot.load_omniglot(zip_dir, image_size=12, max_characters_per_alphabet=1, dtype='uint8')
  test_utils.assert_equal(small.characters, ['character01'] * 4)
  assert small.images.dtype == np.uint8
  keep = [list(zip(subset.alphabets, subset.characters)).index(p) for p in zip(small.alphabets, small.characters)]
  test_utils.assert_equal(omniglot.to_float(small.images), subset.images[keep])
  only2 = omniglot.load_omniglot(zip_dir, image_size=12, sources=['images_background_small2'])
  assert sorted(set(only2.alphabets)) == ['Greek', 'Sanskrit', 'Tagalog']
  with pytest.raises(ValueError, match='image_size'):
    omniglot.load_omniglot(zip_dir, image_size=0)


def test_cache_is_used_and_invalidated_by_image_size_and_sources(zip_dir, tmp_path, monkeypatch):
  calls = []
  decode = omniglot._decode_classes
  monkeypatch.setattr(omniglot, '_decode_classes', lambda *a: calls.append(a[2]) or decode(*a))
  cache = str(tmp_path / 'cache')
  first = omniglot.load_omniglot(zip_dir, image_size=12, cache_dir=cache)
  assert calls == [12] and len(os.listdir(cache)) == 1
  second = omniglot.load_omniglot(zip_dir, image_size=12, cache_dir=cache)
  assert calls == [12], 'cache hit must not decode'
  test_utils.assert_trees_all_equal(second, first)
  third = omniglot.load_omniglot(zip_dir, image_size=10, cache_dir=cache)
  assert calls == [12, 10] and third.images.shape[2:] == (10, 10, 1)
  # A changed archive (same name) gives a new key: no stale cache.
  data = str(tmp_path / 'data')
  os.makedirs(data)
  _write_subset_zip(data, 'images_background_small1', SMALL1, {'Greek': ('character01',)})
  assert omniglot.load_omniglot(data, image_size=12, cache_dir=cache).images.shape[0] == 1
  _write_subset_zip(data, 'images_background_small1', SMALL1, {'Greek': ('character01', 'character02')})
  assert omniglot.load_omniglot(data, image_size=12, cache_dir=cache).images.shape[0] == 2
  assert calls == [12, 10, 12, 12]


def test_corrupt_cache_file_is_rebuilt(zip_dir, tmp_path):
  cache = str(tmp_path)
  reference = omniglot.load_omniglot(zip_dir, image_size=12, cache_dir=cache, max_characters_per_alphabet=1)
  (path,) = [os.path.join(cache, f) for f in os.listdir(cache)]
  with open(path, 'wb') as f:
    f.write(b'garbage')
  again = omniglot.load_omniglot(zip_dir, image_size=12, cache_dir=cache, max_characters_per_alphabet=1)
  test_utils.assert_trees_all_equal(again, reference)


def test_missing_data_dir_error_names_the_config_field(tmp_path):
  with pytest.raises(FileNotFoundError, match='config.data_dir') as missing:
    omniglot.load_omniglot(str(tmp_path / 'nowhere'))
  assert 'images_background_small1.zip' in str(missing.value)
  (tmp_path / 'notes.txt').write_text('no data here')
  with pytest.raises(FileNotFoundError, match='data_dir') as empty:
    omniglot.load_omniglot(str(tmp_path))
  assert 'load_from_tfds' in str(empty.value)
  with pytest.raises(FileNotFoundError, match='images_evaluation'):
    omniglot.load_omniglot(str(tmp_path), sources=['images_evaluation'])


def test_corrupt_archive_error_names_the_file(zip_dir, tmp_path):
  bad = tmp_path / 'images_background_small1.zip'
  bad.write_bytes(b'this is not a zip file')
  with pytest.raises(ValueError, match='images_background_small1.zip'):
    omniglot.load_omniglot(str(tmp_path))
  data = open(os.path.join(zip_dir, 'images_background_small2.zip'), 'rb').read()
  truncated = tmp_path / 'images_background_small2.zip'
  truncated.write_bytes(data[:len(data) // 2])
  bad.unlink()
  with pytest.raises(ValueError, match='images_background_small2.zip'):
    omniglot.load_omniglot(str(tmp_path))


def test_uneven_drawers_error(zip_dir, tmp_path):
  for name in sorted(os.listdir(zip_dir)):
    with zipfile.ZipFile(os.path.join(zip_dir, name)) as archive:
      archive.extractall(tmp_path)
  char_dir = tmp_path / 'images_background_small1' / 'Korean' / 'character01'
  os.remove(char_dir / sorted(os.listdir(char_dir))[0])
  with pytest.raises(ValueError, match='Korean/character01 has 19'):
    omniglot.load_omniglot(str(tmp_path), image_size=8)


@pytest.mark.parametrize('by', ['character', 'alphabet'])
def test_split_is_disjoint_and_rotations_stay_on_their_side(subset, by):
  sizes = (0.6, 0.2, 0.2) if by == 'character' else (2, 1, 1)
  plain = omniglot.split_omniglot(subset, sizes=sizes, by=by, seed=1)
  rotated = omniglot.split_omniglot(subset, sizes=sizes, by=by, seed=1, rotations=(90, 180, 270))
  keys = [set(zip(part.alphabets, part.characters)) for part in plain]
  assert all(keys) and not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
  assert set.union(*keys) == set(zip(subset.alphabets, subset.characters))
  if by == 'alphabet':
    alphabets = [set(part.alphabets) for part in plain]
    assert [len(a) for a in alphabets] == [2, 1, 1] and not alphabets[0] & alphabets[2]
  for base, rot, key in zip(plain, rotated, keys):
    n = len(base.alphabets)
    assert rot.images.shape[0] == 4 * n and set(zip(rot.alphabets, rot.characters)) == key
    test_utils.assert_equal(rot.rotations, np.repeat([0, 90, 180, 270], n))
    test_utils.assert_equal(rot.images[n:2 * n], np.rot90(base.images, 1, axes=(2, 3)))
    test_utils.assert_equal(rot.images[3 * n:], np.rot90(base.images, 3, axes=(2, 3)))
  # Pixel-level: no train image (any rotation) equals a validation/test image.
  train_hashes = _image_hashes(rotated.train.images)
  assert not train_hashes & (_image_hashes(rotated.validation.images) | _image_hashes(rotated.test.images))
  # The same seed gives the same split; some other seed a different one.
  def train_keys(seed):
    train = omniglot.split_omniglot(subset, sizes=sizes, by=by, seed=seed).train
    return set(zip(train.alphabets, train.characters))
  assert train_keys(1) == keys[0]
  assert any(train_keys(seed) != keys[0] for seed in range(2, 6))


def test_no_meta_test_image_ever_appears_in_a_meta_train_episode(subset):
  splits = omniglot.split_omniglot(subset, sizes=(0.5, 0.2, 0.3), by='alphabet', seed=0, rotations=(90, 180, 270))
  held_out = _image_hashes(splits.validation.images) | _image_hashes(splits.test.images)
  train = _image_hashes(splits.train.images)
  batch = omniglot_tasks.sample_episodes(jax.random.key(0), splits.train.images, num_tasks=8, ways=5,
                                         shots=1, queries=2)
  seen = _image_hashes(np.asarray(batch.support_inputs)) | _image_hashes(np.asarray(batch.query_inputs))
  assert seen <= train and not seen & held_out


def test_split_argument_errors(subset):
  with pytest.raises(ValueError, match='sizes'):
    omniglot.split_omniglot(subset, sizes=(0.8, 0.3, 0.1))
  with pytest.raises(ValueError, match='sizes'):
    omniglot.split_omniglot(subset, sizes=(5, 0.5, 1))
  with pytest.raises(ValueError, match='by'):
    omniglot.split_omniglot(subset, by='drawer')
  with pytest.raises(ValueError, match='rotations'):
    omniglot.rotate_classes(subset, (45,))
  with pytest.raises(ValueError, match='unrotated'):
    omniglot.split_omniglot(omniglot.rotate_classes(subset))


def test_load_from_tfds_without_tfds_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)  # Import fails, even if installed.
  with pytest.raises(ImportError, match='tensorflow-datasets') as error:
    omniglot.load_from_tfds('small1', None, 28)
  assert 'array_record' in str(error.value) and 'load_omniglot' in str(error.value)
