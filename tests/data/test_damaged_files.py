"""Damaged data files are named in one ``ValueError`` with the fix: a truncated strokes zip, Omniglot images that
are not images or are far larger than Omniglot's 105 x 105 (refused from the header, before decoding)."""

import os
import shutil
import struct
import zipfile

import pytest
from PIL import Image

from metaprune_jax.data import omniglot_files
from metaprune_jax.data import strokes
from tests.data import damaged
from tests.shared_data import OMNIGLOT_DIR


@pytest.fixture
def extracted(zip_dir, tmp_path):
  """``zip_dir``'s small1 archive extracted: ``(data_dir, one of its PNGs)``."""
  shutil.unpack_archive(os.path.join(zip_dir, 'images_background_small1.zip'), tmp_path)
  character = tmp_path / 'images_background_small1' / 'Korean' / 'character02'
  return str(tmp_path), character / sorted(os.listdir(character))[7]


def _huge_valid_png(path):
  Image.new('L', (3000, 3000), 255).save(path)


@pytest.mark.parametrize('damage,reason', [
    (lambda path: path.write_bytes(b'not a png'), 'not an image file'),
    (lambda path: path.write_bytes(damaged.png_header(100_000, 100_000)), 'far larger than an Omniglot image'),
    (lambda path: path.write_bytes(damaged.png_header(6_000, 4_000)), '6000x4000 pixels, far larger'),
    (_huge_valid_png, '3000x3000 pixels, far larger'),
    (lambda path: path.write_bytes(b'\0' * (9 << 20)), '9437184 bytes, far larger than an Omniglot PNG'),
])
def test_a_damaged_omniglot_image_is_named(extracted, damage, reason):
  data_dir, image = extracted
  damage(image)
  with pytest.raises(ValueError, match='re-download or re-extract it') as error:
    omniglot_files.load_omniglot(data_dir, image_size=8)
  assert f'Cannot read Omniglot image {image} ({reason}' in str(error.value), error.value


@pytest.fixture
def strokes_dir(tmp_path):
  for name in strokes.ARCHIVES:
    source = os.path.join(OMNIGLOT_DIR, name)
    if not os.path.exists(source):
      pytest.skip(f'{source} is missing')
    shutil.copyfile(source, tmp_path / name)
  return tmp_path


def test_a_truncated_strokes_zip_is_named(strokes_dir):
  path = strokes_dir / strokes.ARCHIVES[0]
  damaged.truncate_half(path)
  with pytest.raises(ValueError, match=f'strokes archive {path} .*truncated or corrupt.*Download '
                                       f'{strokes.ARCHIVES[0]} again'):
    strokes.load_strokes(str(strokes_dir))


def test_a_corrupt_drawing_in_a_strokes_zip_names_the_member(strokes_dir):
  path = strokes_dir / strokes.ARCHIVES[0]
  with zipfile.ZipFile(path) as archive:  # The first drawing decoded: members are read in sorted order.
    member = sorted(m for m in archive.namelist() if m.endswith('.txt') and not m.startswith('__MACOSX'))[0]
    offset = archive.getinfo(member).header_offset
  data = bytearray(path.read_bytes())
  name_length, extra_length = struct.unpack('<HH', data[offset + 26:offset + 30])
  body = offset + 30 + name_length + extra_length
  data[body:body + 16] = bytes(16)  # Zeroed compressed bytes: a zlib error or a CRC mismatch.
  path.write_bytes(bytes(data))
  with pytest.raises(ValueError, match='truncated or corrupt') as error:
    strokes.load_strokes(str(strokes_dir))
  assert f'{path}:{member} ' in str(error.value), error.value
