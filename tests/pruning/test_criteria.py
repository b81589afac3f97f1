"""Tests for metaprune_jax.pruning.criteria."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.pruning import criteria
from tests import test_utils


def _params():
  keys = jax.random.split(jax.random.key(0), 3)
  return {
      'Conv_0': {'kernel': jax.random.normal(keys[0], (3, 3, 1, 4)), 'bias': jnp.ones(4)},
      'Dense_0': {'kernel': jax.random.normal(keys[1], (4, 2)), 'bias': jnp.ones(2)},
      'LayerNorm_0': {'scale': jnp.ones(2)},
      'Embed_0': {'embedding': jax.random.normal(keys[2], (5, 2))},
  }


def _structure(tree):
  return jax.tree.structure(tree, is_leaf=lambda x: x is None)


def test_default_prunable_marks_only_kernels_with_ndim_at_least_2():
  params = _params()
  params['Odd_0'] = {'kernel': jnp.ones(3)}  # a 1-d "kernel" stays dense
  prunable = criteria.default_prunable(params)
  assert prunable['Conv_0'] == {'kernel': True, 'bias': None}
  assert prunable['Dense_0'] == {'kernel': True, 'bias': None}
  assert prunable['LayerNorm_0'] == {'scale': None}
  assert prunable['Embed_0'] == {'embedding': None}
  assert prunable['Odd_0'] == {'kernel': None}


def test_magnitude_scores_are_abs_weights_with_none_elsewhere():
  params = _params()
  scores = criteria.magnitude_scores(params)
  assert _structure(scores) == _structure(criteria.default_prunable(params))
  test_utils.assert_equal(scores['Dense_0']['kernel'], jnp.abs(params['Dense_0']['kernel']))
  assert scores['Dense_0']['bias'] is None
  assert scores['Embed_0']['embedding'] is None


def test_custom_prunable_tree_is_respected():
  params = _params()
  prunable = jax.tree.map(lambda _: None, params)
  prunable['Dense_0']['bias'] = True
  scores = criteria.magnitude_scores(params, prunable)
  test_utils.assert_equal(scores['Dense_0']['bias'], jnp.ones(2))
  assert scores['Dense_0']['kernel'] is None


def test_snip_score_equals_abs_w_times_g_on_hand_example():
  params = {'Dense_0': {'kernel': jnp.array([[1.0, -2.0], [3.0, -4.0]]), 'bias': jnp.ones(2)}}
  grads = {'Dense_0': {'kernel': jnp.array([[0.5, 0.5], [-1.0, 2.0]]), 'bias': jnp.ones(2)}}
  scores = criteria.snip_scores(params, grads)
  test_utils.assert_equal(scores['Dense_0']['kernel'], [[0.5, 1.0], [3.0, 8.0]])
  assert scores['Dense_0']['bias'] is None


def test_random_scores_depend_on_key_and_stay_in_unit_interval():
  params = _params()
  a = criteria.random_scores(jax.random.key(1), params)
  b = criteria.random_scores(jax.random.key(1), params)
  c = criteria.random_scores(jax.random.key(2), params)
  test_utils.assert_trees_all_equal(a, b)
  assert not np.array_equal(a['Dense_0']['kernel'], c['Dense_0']['kernel'])
  # Distinct per-leaf keys: the two leaves do not share their first draws.
  assert not np.allclose(np.ravel(a['Dense_0']['kernel'])[:4],
                         np.ravel(a['Conv_0']['kernel'])[:4])
  for leaf in jax.tree.leaves(a):
    assert leaf.dtype == jnp.float32 and np.all((leaf >= 0) & (leaf < 1))
  assert a['Conv_0']['kernel'].shape == (3, 3, 1, 4)
  assert a['Dense_0']['bias'] is None


def test_unit_norm_scores_l1_and_l2_per_output_unit():
  kernel = jnp.array([[3.0, -1.0], [-4.0, 0.0]])  # [in=2, out=2]
  params = {'Dense_0': {'kernel': kernel, 'bias': jnp.zeros(2)}}
  test_utils.assert_close(criteria.unit_norm_scores(params)['Dense_0']['kernel'], [7.0, 1.0])
  test_utils.assert_close(criteria.unit_norm_scores(params, ord=2)['Dense_0']['kernel'],
                          [5.0, 1.0])
  with pytest.raises(ValueError, match='ord'):
    criteria.unit_norm_scores(params, ord=3)


def test_unit_norm_scores_conv_gives_one_score_per_filter():
  params = _params()
  scores = criteria.unit_norm_scores(params)['Conv_0']['kernel']
  kernel = params['Conv_0']['kernel']
  assert scores.shape == (4,)
  test_utils.assert_close(scores[2], jnp.sum(jnp.abs(kernel[..., 2])), rtol=1e-5)
