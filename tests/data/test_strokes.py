"""Tests for metaprune_jax.data.strokes."""

import os
import zipfile

import numpy as np
import pytest

from metaprune_jax.data import strokes
from tests import test_utils

from tests.shared_data import OMNIGLOT_DIR as DATA_DIR
REAL_MEMBER = 'strokes_background_small1/Balinese/character01/0108_01.txt'
needs_data = pytest.mark.skipif(
    not os.path.isfile(os.path.join(DATA_DIR, strokes.ARCHIVES[0])),
    reason='shared Omniglot strokes archives not present')

TWO_STROKES = 'START\n0,0,0\n3,0,10\n3,0,15\n3,4,20\nBREAK\n10,10,40\nBREAK\n'


def _write_fake_archives(data_dir, alphabets=(('Greek', 'Futhorc'), ('Greek', 'Tagalog'))):
  """Two tiny archives; 'Greek' appears in both (like the real data), 2 drawers each."""
  for archive_name, names in zip(strokes.ARCHIVES, alphabets):
    root = archive_name[:-len('.zip')]
    with zipfile.ZipFile(os.path.join(data_dir, archive_name), 'w') as archive:
      archive.writestr(f'__MACOSX/{root}/Greek/character01/._0001_01.txt', 'junk')
      for a, alphabet in enumerate(names):
        for drawer in (1, 2):
          text = f'START\n0,0,0\n{a + 1},{drawer},5\nBREAK\n'
          archive.writestr(f'{root}/{alphabet}/character01/000{a}_0{drawer}.txt', text)


@needs_data
def test_parser_matches_raw_text_of_real_file():
  with zipfile.ZipFile(os.path.join(DATA_DIR, strokes.ARCHIVES[0])) as archive:
    text = archive.read(REAL_MEMBER).decode('ascii')
  lines = text.split()
  parsed = strokes.parse_strokes_text(text)
  # One stroke per BREAK; point counts are the runs of x,y,t lines between them.
  runs = [len(run.split()) for run in ' '.join(lines[1:]).split('BREAK')[:-1]]
  assert len(parsed) == lines.count('BREAK') == len(runs)
  assert [len(s) for s in parsed] == runs
  first = [float(v) for v in lines[1].split(',')]
  test_utils.assert_equal(parsed[0][0], first)
  last = [float(v) for v in lines[-2].split(',')]
  test_utils.assert_equal(parsed[-1][-1], last)


def test_parser_rejects_malformed_text():
  with pytest.raises(ValueError, match='START'):
    strokes.parse_strokes_text('0,0,0\nBREAK\n')
  with pytest.raises(ValueError, match='line 3'):
    strokes.parse_strokes_text('START\n0,0,0\n1,2\nBREAK\n')
  with pytest.raises(ValueError, match='unterminated'):
    strokes.parse_strokes_text('START\n0,0,0\n')


@pytest.mark.parametrize('num_points', [2, 5, 64])
def test_resampling_length_and_pen_up_at_stroke_ends(num_points):
  seq = strokes.drawing_to_sequence(strokes.parse_strokes_text(TWO_STROKES), num_points)
  assert seq.shape == (num_points, 3) and seq.dtype == np.float32
  # The dot gets one point (the last); the pen lifts after each stroke's last point.
  expected_pen = np.zeros(num_points)
  expected_pen[[num_points - 2, num_points - 1]] = 1
  test_utils.assert_equal(seq[:, 2], expected_pen)


def test_sequence_positions_follow_arc_length_and_normalisation():
  seq = strokes.drawing_to_sequence(strokes.parse_strokes_text(TWO_STROKES), 8)
  positions = np.cumsum(seq[:, :2], axis=0)
  # Bounding box (0,0)-(10,10): centre (5,5), half side 5.
  raw = (positions * 5) + 5
  # First stroke: 7 points equally spaced along the 7-long L path (0,0)->(3,0)->(3,4);
  # the duplicate (3,0) sample is dropped.
  arc = np.linspace(0, 7, 7)
  first = np.stack([np.minimum(arc, 3), np.maximum(arc - 3, 0)], 1)
  test_utils.assert_close(raw[:7], first, atol=1e-5)
  test_utils.assert_close(raw[7], [10, 10], atol=1e-5)
  assert np.abs(positions).max() <= 1 + 1e-6


@needs_data
def test_real_drawing_pen_flags_match_stroke_count():
  with zipfile.ZipFile(os.path.join(DATA_DIR, strokes.ARCHIVES[0])) as archive:
    parsed = strokes.parse_strokes_text(archive.read(REAL_MEMBER).decode('ascii'))
  seq = strokes.drawing_to_sequence(parsed, 32)
  assert seq.shape == (32, 3)
  assert seq[:, 2].sum() == len(parsed) and seq[-1, 2] == 1


def test_more_strokes_than_points_are_joined():
  text = 'START\n' + ''.join(f'{i},0,0\n{i},1,1\nBREAK\n' for i in range(6))
  seq = strokes.drawing_to_sequence(strokes.parse_strokes_text(text), 4)
  test_utils.assert_equal(seq[:, 2], [1, 1, 1, 1])
  test_utils.assert_all_finite(seq)


def test_split_is_disjoint_covering_and_seeded():
  names = tuple(f'A/character{i:02d}' for i in range(20))
  data = strokes.Strokes(np.arange(20, dtype=np.float32).reshape(20, 1, 1, 1), names)
  splits = strokes.split_characters(data, seed=0, val_fraction=0.2, test_fraction=0.25)
  sets = {k: set(v.names) for k, v in splits.items()}
  assert [len(sets[k]) for k in ('train', 'val', 'test')] == [11, 4, 5]
  assert not (sets['train'] & sets['val'] or sets['train'] & sets['test']
              or sets['val'] & sets['test'])
  assert sets['train'] | sets['val'] | sets['test'] == set(names)
  for split in splits.values():  # Drawings travel with their names.
    test_utils.assert_equal(split.drawings[:, 0, 0, 0], [names.index(n) for n in split.names])
  again = strokes.split_characters(data, seed=0, val_fraction=0.2, test_fraction=0.25)
  other = strokes.split_characters(data, seed=1, val_fraction=0.2, test_fraction=0.25)
  assert again['test'].names == splits['test'].names
  assert other['test'].names != splits['test'].names
  with pytest.raises(ValueError, match='val_fraction'):
    strokes.split_characters(data, seed=0, val_fraction=0.6, test_fraction=0.5)


def _rotated_points(points, degrees):
  angle = np.deg2rad(degrees)
  rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  return points @ rotation.T


@pytest.mark.parametrize('degrees', [90, 180, 270])
def test_rotated_drawing_equals_drawing_of_rotated_strokes(degrees):
  rng = np.random.default_rng(degrees)
  raw = [rng.normal(size=(n, 2)) * (3.0, 1.0) + 5.0 for n in (4, 7, 3)]  # Wide, off-centre strokes.
  data = strokes.Strokes(strokes.drawing_to_sequence(raw, 16)[None, None], ('A/character01',))
  rotated = strokes.rotate_drawings(data, (degrees,))
  assert rotated.names == ('A/character01', f'A/character01@{degrees}')
  test_utils.assert_equal(rotated.drawings[0], data.drawings[0])
  # Resampling and normalising the rotated pen samples gives the rotated features.
  expected = strokes.drawing_to_sequence([_rotated_points(s, degrees) for s in raw], 16)
  test_utils.assert_close(rotated.drawings[1, 0], expected, atol=1e-5)


def test_rotations_compose_and_keep_classes_in_order():
  data = strokes.Strokes(np.random.default_rng(0).normal(size=(3, 2, 5, 3)).astype(np.float32),
                         tuple(f'A/character{i:02d}' for i in range(3)))
  rotated = strokes.rotate_drawings(data)
  assert rotated.drawings.shape == (12, 2, 5, 3)
  assert rotated.names[3:6] == tuple(f'{n}@90' for n in data.names)
  twice = strokes.rotate_drawings(strokes.Strokes(rotated.drawings[3:6], data.names), (90,))
  test_utils.assert_close(twice.drawings[3:], rotated.drawings[6:9], atol=1e-6)  # 90 + 90 = 180.
  with pytest.raises(ValueError, match='distinct values among'):
    strokes.rotate_drawings(data, (90, 45))


def test_deduplicates_alphabets_and_reuses_cache(tmp_path, monkeypatch):
  data_dir, cache_dir = tmp_path / 'data', tmp_path / 'cache'
  data_dir.mkdir()
  _write_fake_archives(data_dir)
  data = strokes.load_strokes(str(data_dir), num_points=4, cache_dir=str(cache_dir))
  assert data.names == ('Futhorc/character01', 'Greek/character01', 'Tagalog/character01')
  assert data.drawings.shape == (3, 2, 4, 3)
  assert len(list(cache_dir.glob('*.npz'))) == 1

  def no_decode(*args):
    raise AssertionError('decoded again although a valid cache exists')
  monkeypatch.setattr(strokes, '_decode', no_decode)
  cached = strokes.load_strokes(str(data_dir), num_points=4, cache_dir=str(cache_dir))
  assert cached.names == data.names
  test_utils.assert_equal(cached.drawings, data.drawings)
  # A different num_points, or a changed archive, must not reuse the cache.
  with pytest.raises(AssertionError, match='decoded again'):
    strokes.load_strokes(str(data_dir), num_points=5, cache_dir=str(cache_dir))
  stat = os.stat(data_dir / strokes.ARCHIVES[1])
  os.utime(data_dir / strokes.ARCHIVES[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  with pytest.raises(AssertionError, match='decoded again'):
    strokes.load_strokes(str(data_dir), num_points=4, cache_dir=str(cache_dir))


def test_corrupt_or_stale_cache_is_rebuilt(tmp_path):
  data_dir, cache_dir = tmp_path / 'data', tmp_path / 'cache'
  data_dir.mkdir()
  _write_fake_archives(data_dir)
  fresh = strokes.load_strokes(str(data_dir), num_points=4)
  cache_path = cache_dir / f'omniglot_strokes_4_{strokes.cache_key(str(data_dir), 4)}.npz'
  cache_dir.mkdir()
  cache_path.write_bytes(b'not an npz')
  data = strokes.load_strokes(str(data_dir), num_points=4, cache_dir=str(cache_dir))
  test_utils.assert_equal(data.drawings, fresh.drawings)
  # A file under the right name whose stored key differs is not trusted either.
  np.savez(cache_path, drawings=np.zeros((1, 1, 4, 3)), names=np.array(['x']), key=np.array('old'))
  data = strokes.load_strokes(str(data_dir), num_points=4, cache_dir=str(cache_dir))
  assert data.names == fresh.names
  test_utils.assert_equal(data.drawings, fresh.drawings)


def test_missing_files_error_names_data_dir(tmp_path):
  with pytest.raises(ValueError, match='data_dir'):
    strokes.load_strokes(str(tmp_path))


@needs_data
def test_real_dataset_counts(tmp_path):
  data = strokes.load_strokes(DATA_DIR, num_points=16, cache_dir=str(tmp_path))
  # 8 unique alphabets (Greek and Latin once each), 242 characters, 20 drawers.
  assert data.drawings.shape == (242, 20, 16, 3)
  assert len(set(data.names)) == 242
  assert len({n.split('/')[0] for n in data.names}) == 8
  test_utils.assert_all_finite(data.drawings)
  assert np.all(data.drawings[..., -1, 2] == 1)
