"""Tests for metaprune_jax.data.episode_folders on a few generated PNGs."""

import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from metaprune_jax.data import episode_folders
from metaprune_jax.data import omniglot_files
from tests import test_utils
from tests.shared_data import OMNIGLOT_DIR

SMALL1 = os.path.join(OMNIGLOT_DIR, 'images_background_small1.zip')


def _glyph(path, size, box, mode='L'):
  """Writes a dark box on light paper (``size`` = (width, height))."""
  image = Image.new(mode, size, 'white')
  image.paste('black', box)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path)


def _make_episode(root, name='ep1'):
  """3 classes; support has 2/1/3 images of mixed sizes and modes, query 1/0/2."""
  ep = os.path.join(root, name)
  _glyph(f'{ep}/support/beta/a.png', (40, 40), (0, 0, 20, 40))
  _glyph(f'{ep}/support/beta/b.png', (64, 32), (0, 0, 32, 32), mode='RGB')
  _glyph(f'{ep}/support/alpha/x.png', (30, 30), (10, 10, 20, 20))
  for i in range(3):
    _glyph(f'{ep}/support/gamma/{i}.png', (50, 50), (25, 0, 50, 50))
  _glyph(f'{ep}/query/alpha/q.png', (33, 33), (11, 11, 22, 22))
  _glyph(f'{ep}/query/gamma/q1.png', (20, 20), (10, 0, 20, 20))
  _glyph(f'{ep}/query/gamma/q2.png', (20, 20), (10, 0, 20, 20), mode='RGB')
  return ep


def test_load_episode_shapes_labels_and_class_names(tmp_path):
  (episode,) = episode_folders.load_episode_folders(os.path.dirname(_make_episode(str(tmp_path))), image_size=8)
  assert episode.name == 'ep1'
  assert episode.class_names == ('alpha', 'beta', 'gamma')
  assert episode.support_inputs.shape == (6, 8, 8, 1) and episode.support_inputs.dtype == np.float32
  assert episode.query_inputs.shape == (3, 8, 8, 1)
  test_utils.assert_equal(episode.support_targets, [0, 1, 1, 2, 2, 2])
  test_utils.assert_equal(episode.query_targets, [0, 2, 2])
  assert episode.support_targets.dtype == np.int32
  assert [os.path.basename(f) for f in episode.query_files] == ['q.png', 'q1.png', 'q2.png']
  # Ink is 1: alpha's centre square, gamma's right half; paper is 0.
  assert episode.support_inputs[0, 4, 4, 0] == 1.0 and episode.support_inputs[0, 0, 0, 0] == 0.0
  assert episode.support_inputs[3, 4, 7, 0] == 1.0 and episode.support_inputs[3, 4, 0, 0] == 0.0
  batch = episode_folders.as_task_batch(episode)
  assert batch.support_inputs.shape == (1, 6, 8, 8, 1) and batch.query_targets.shape == (1, 3)


def test_episode_root_may_be_a_single_episode_and_episodes_are_sorted(tmp_path):
  ep = _make_episode(str(tmp_path), 'b_episode')
  _make_episode(str(tmp_path), 'a_episode')
  assert [e.name for e in episode_folders.load_episode_folders(str(tmp_path), image_size=6)] == [
      'a_episode', 'b_episode']
  (single,) = episode_folders.load_episode_folders(ep, image_size=6)
  assert single.name == 'b_episode'


@pytest.mark.skipif(not os.path.exists(SMALL1), reason='Omniglot zip not available')
def test_episode_images_are_preprocessed_exactly_like_training_data(tmp_path):
  data_dir = tmp_path / 'data'
  data_dir.mkdir()
  with zipfile.ZipFile(SMALL1) as src, zipfile.ZipFile(data_dir / 'images_x.zip', 'w') as dst:
    names = sorted(n for n in src.namelist() if '/Greek/character01/' in n and n.endswith('.png'))
    for name in names:
      dst.writestr(name, src.read(name))
    for i, name in enumerate(names[:3]):  # Drawers 0, 1 -> support; drawer 2 -> query.
      side = 'query' if i == 2 else 'support'
      path = tmp_path / 'episodes' / 'ep' / side / 'greek1' / f'{i}.png'
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_bytes(src.read(name))
  train = omniglot_files.load_omniglot(str(data_dir), image_size=28)
  (episode,) = episode_folders.load_episode_folders(str(tmp_path / 'episodes'), image_size=28)
  test_utils.assert_equal(episode.support_inputs, train.images[0, :2])
  test_utils.assert_equal(episode.query_inputs, train.images[0, 2:3])


def test_malformed_episode_folders_raise_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    episode_folders.load_episode_folders(str(tmp_path / 'missing'))
  with pytest.raises(ValueError, match='no episode folders'):
    episode_folders.load_episode_folders(str(tmp_path))

  ep = _make_episode(str(tmp_path / 'no_query'))
  os.rename(f'{ep}/query', f'{ep}/questions')
  with pytest.raises(ValueError, match='query'):
    episode_folders.load_episode(ep)

  ep = _make_episode(str(tmp_path / 'loose'))
  _glyph(f'{ep}/support/stray.png', (10, 10), (0, 0, 5, 5))
  with pytest.raises(ValueError, match='outside class folders'):
    episode_folders.load_episode(ep)

  ep = _make_episode(str(tmp_path / 'unknown_class'))
  _glyph(f'{ep}/query/delta/q.png', (10, 10), (0, 0, 5, 5))
  with pytest.raises(ValueError, match='delta'):
    episode_folders.load_episode(ep)

  ep = _make_episode(str(tmp_path / 'empty_class'))
  os.makedirs(f'{ep}/support/empty')
  with pytest.raises(ValueError, match='no images'):
    episode_folders.load_episode(ep)

  ep = _make_episode(str(tmp_path / 'not_image'))
  with open(f'{ep}/support/alpha/notes.txt', 'w') as f:
    f.write('x')
  with pytest.raises(ValueError, match='notes.txt'):
    episode_folders.load_episode(ep)

  ep = _make_episode(str(tmp_path / 'corrupt'))
  with open(f'{ep}/query/alpha/q.png', 'wb') as f:
    f.write(b'not a png')
  with pytest.raises(ValueError, match='q.png'):
    episode_folders.load_episode(ep)


def test_hidden_files_are_ignored(tmp_path):
  ep = _make_episode(str(tmp_path))
  with open(f'{ep}/support/alpha/.DS_Store', 'w') as f:
    f.write('x')
  os.makedirs(f'{ep}/query/.ipynb_checkpoints')
  assert episode_folders.load_episode(ep, image_size=6).support_inputs.shape == (6, 6, 6, 1)
