"""Tests for metaprune_jax/data/rotations.py."""

import pytest

from metaprune_jax.data import rotations


def test_check_rotations_accepts_distinct_quarter_turns_as_ints():
  assert rotations.check_rotations([270, 90.0]) == (270, 90)
  assert rotations.check_rotations(()) == ()


@pytest.mark.parametrize('degrees', [(45,), (90, 90), (0,), (360,), ('ninety',)])
def test_check_rotations_rejects_others_naming_the_allowed_values(degrees):
  with pytest.raises(ValueError, match=r'distinct values among \(90, 180, 270\)'):
    rotations.check_rotations(degrees)


def test_check_rotations_names_the_flag_it_is_given():
  with pytest.raises(ValueError, match=r'^--config\.rotations=\(45,\) is invalid'):
    rotations.check_rotations((45,), name='--config.rotations')
