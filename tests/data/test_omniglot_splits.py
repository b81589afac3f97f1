"""Tests for metaprune_jax.data.omniglot_splits on a small subset of the real archives."""

import jax
import numpy as np
import pytest

from metaprune_jax.data import omniglot_splits
from metaprune_jax.tasks import omniglot as omniglot_tasks
from tests import test_utils
from tests.data import omniglot_subset


@pytest.mark.parametrize('by', ['character', 'alphabet'])
def test_split_is_disjoint_and_rotations_stay_on_their_side(subset, by):
  sizes = (0.6, 0.2, 0.2) if by == 'character' else (2, 1, 1)
  plain = omniglot_splits.split_omniglot(subset, sizes=sizes, by=by, seed=1)
  rotated = omniglot_splits.split_omniglot(subset, sizes=sizes, by=by, seed=1, rotations=(90, 180, 270))
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
  train_hashes = omniglot_subset.image_hashes(rotated.train.images)
  assert not train_hashes & (omniglot_subset.image_hashes(rotated.validation.images) | omniglot_subset.image_hashes(rotated.test.images))
  # The same seed gives the same split; some other seed a different one.
  def train_keys(seed):
    train = omniglot_splits.split_omniglot(subset, sizes=sizes, by=by, seed=seed).train
    return set(zip(train.alphabets, train.characters))
  assert train_keys(1) == keys[0]
  assert any(train_keys(seed) != keys[0] for seed in range(2, 6))


def test_no_meta_test_image_ever_appears_in_a_meta_train_episode(subset):
  splits = omniglot_splits.split_omniglot(subset, sizes=(0.5, 0.2, 0.3), by='alphabet', seed=0, rotations=(90, 180, 270))
  held_out = omniglot_subset.image_hashes(splits.validation.images) | omniglot_subset.image_hashes(splits.test.images)
  train = omniglot_subset.image_hashes(splits.train.images)
  batch = omniglot_tasks.sample_episodes(jax.random.key(0), splits.train.images, num_tasks=8, ways=5,
                                         shots=1, queries=2)
  seen = omniglot_subset.image_hashes(np.asarray(batch.support_inputs)) | omniglot_subset.image_hashes(np.asarray(batch.query_inputs))
  assert seen <= train and not seen & held_out


def test_split_argument_errors(subset):
  with pytest.raises(ValueError, match='sizes'):
    omniglot_splits.split_omniglot(subset, sizes=(0.8, 0.3, 0.1))
  with pytest.raises(ValueError, match='sizes'):
    omniglot_splits.split_omniglot(subset, sizes=(5, 0.5, 1))
  with pytest.raises(ValueError, match='by'):
    omniglot_splits.split_omniglot(subset, by='drawer')
  with pytest.raises(ValueError, match='rotations'):
    omniglot_splits.rotate_classes(subset, (45,))
  with pytest.raises(ValueError, match='unrotated'):
    omniglot_splits.split_omniglot(omniglot_splits.rotate_classes(subset))
