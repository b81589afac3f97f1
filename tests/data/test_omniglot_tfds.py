"""Tests for metaprune_jax.data.omniglot_tfds."""

import sys

import pytest

from metaprune_jax.data import omniglot_tfds


def test_load_from_tfds_without_tfds_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)  # Import fails, even if installed.
  with pytest.raises(ImportError, match='tensorflow-datasets') as error:
    omniglot_tfds.load_from_tfds('small1', None, 28)
  assert 'array_record' in str(error.value) and 'load_omniglot' in str(error.value)
