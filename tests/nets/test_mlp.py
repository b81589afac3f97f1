"""Tests for metaprune_jax.nets.mlp."""

import pytest

from metaprune_jax.nets import mlp


def test_make_mlp_rejects_bad_settings():
  with pytest.raises(ValueError, match='--config.activation'):
    mlp.make_mlp((4,), 1, 'sigmoidish')
  with pytest.raises(ValueError, match='--config.hidden_sizes'):
    mlp.make_mlp((4, 0), 1)
