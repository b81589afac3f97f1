"""Small Omniglot archives copied from the real ones in ``../shared/data/omniglot``, for tests."""

import hashlib
import os
import zipfile

import numpy as np
import pytest

from tests.shared_data import OMNIGLOT_DIR as SHARED

SMALL1 = os.path.join(SHARED, 'images_background_small1.zip')
SMALL2 = os.path.join(SHARED, 'images_background_small2.zip')
HAVE_DATA = os.path.exists(SMALL1) and os.path.exists(SMALL2)
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f'Omniglot zips not in {SHARED}')

# (source zip, alphabet, characters) copied into the test archives; Greek
# character02 is in both, to check de-duplication.
SUBSET = {
    'images_background_small1': (SMALL1, {'Greek': ('character01', 'character02'),
                                          'Korean': ('character01', 'character02', 'character03')}),
    'images_background_small2': (SMALL2, {'Greek': ('character02', 'character03'),
                                          'Tagalog': ('character01', 'character02'),
                                          'Sanskrit': ('character01', 'character02')}),
}


def write_subset_zip(dest_dir, top, source_zip, wanted):
  """Copies the PNGs of ``wanted`` {alphabet: characters} from ``source_zip``."""
  path = os.path.join(dest_dir, f'{top}.zip')
  with zipfile.ZipFile(source_zip) as src, zipfile.ZipFile(path, 'w') as dst:
    for name in src.namelist():
      parts = name.split('/')
      if len(parts) == 4 and parts[3].endswith('.png') and parts[2] in wanted.get(parts[1], ()):
        dst.writestr(f'{top}/{parts[1]}/{parts[2]}/{parts[3]}', src.read(name))
  return path


def write_subset(dest_dir):
  """Writes the two ``SUBSET`` archives (10 characters after de-duplication) into ``dest_dir``."""
  for top, (source, wanted) in SUBSET.items():
    write_subset_zip(dest_dir, top, source, wanted)


def image_hashes(images):
  """``[classes, drawers, H, W, C]`` -> set of sha1 digests, one per image."""
  return {hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images.reshape((-1,) + images.shape[2:])}
