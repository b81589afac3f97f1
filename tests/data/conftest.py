"""Fixtures shared by the Omniglot data tests: a 10-character subset of the real archives."""

import pytest

from metaprune_jax.data import omniglot_files
from tests.data import omniglot_subset


@pytest.fixture(scope='module')
def zip_dir(tmp_path_factory):
  """A folder with the two ``omniglot_subset.SUBSET`` archives."""
  if not omniglot_subset.HAVE_DATA:
    pytest.skip(f'Omniglot zips not in {omniglot_subset.SHARED}')
  root = str(tmp_path_factory.mktemp('omniglot_zips'))
  omniglot_subset.write_subset(root)
  return root


@pytest.fixture(scope='module')
def subset(zip_dir):
  """``zip_dir`` loaded at 12 x 12 pixels: images ``[10, 20, 12, 12, 1]`` float32."""
  return omniglot_files.load_omniglot(zip_dir, image_size=12)
