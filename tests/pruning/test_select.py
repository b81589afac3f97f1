"""Tests for metaprune_jax.pruning.select."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.masks import sparsity
from metaprune_jax.masks.masking import apply_masks
from metaprune_jax.pruning import criteria
from metaprune_jax.pruning import schedules
from metaprune_jax.pruning import select
from tests import test_utils


def _params():
  keys = jax.random.split(jax.random.key(0), 3)
  return {
      'Conv_0': {'kernel': jax.random.normal(keys[0], (3, 3, 2, 4)), 'bias': jnp.ones(4)},
      'Dense_0': {'kernel': jax.random.normal(keys[1], (8, 6)), 'bias': jnp.ones(6)},
      'Dense_1': {'kernel': jax.random.normal(keys[2], (6, 3)), 'bias': jnp.ones(3)},
  }


def _zeros(x):
  return int(np.sum(np.asarray(x) == 0))


@pytest.mark.parametrize('sparsity', [0.0, 0.1, 0.25, 0.5, 0.9, 0.99])
def test_topk_exact_sparsity_with_all_equal_scores(sparsity):
  scores = {'a': {'kernel': jnp.ones((4, 5)), 'bias': None}, 'b': {'kernel': jnp.ones((2, 5))}}
  n = 30
  expected = math.floor(sparsity * n + 0.5)
  glob = select.topk_masks(scores, sparsity)
  assert sum(_zeros(x) for x in jax.tree.leaves(glob)) == expected
  assert glob['a']['bias'] is None
  layer = select.topk_masks(scores, sparsity, scope='layerwise')
  assert _zeros(layer['a']['kernel']) == math.floor(sparsity * 20 + 0.5)
  assert _zeros(layer['b']['kernel']) == math.floor(sparsity * 10 + 0.5)
  for leaf in jax.tree.leaves(glob) + jax.tree.leaves(layer):
    assert leaf.dtype == jnp.float32
    assert set(np.unique(np.asarray(leaf))) <= {0.0, 1.0}


def test_topk_rounds_half_up_and_breaks_ties_by_index():
  scores = {'k': jnp.ones((2, 5))}
  mask = select.topk_masks(scores, 0.25)['k']  # 0.25 * 10 = 2.5 -> 3 zeros
  test_utils.assert_equal(mask, [[0, 0, 0, 1, 1], [1, 1, 1, 1, 1]])
  # Across leaves, the earlier leaf in tree order is pruned first on ties.
  masks = select.topk_masks({'a': jnp.ones(3), 'b': jnp.ones(3)}, 0.5)
  test_utils.assert_equal(masks['a'], [0, 0, 0])
  test_utils.assert_equal(masks['b'], [1, 1, 1])


def test_topk_prunes_lowest_scores():
  scores = {'k': jnp.array([[0.3, -1.0, 5.0], [2.0, 0.1, 4.0]])}
  test_utils.assert_equal(select.topk_masks(scores, 0.5)['k'], [[0, 0, 1], [1, 0, 1]])


def test_global_prunes_small_layer_first_layerwise_prunes_equally():
  params = {'big': {'kernel': 10.0 + jnp.arange(16.0).reshape(4, 4)},
            'small': {'kernel': 0.01 * (1.0 + jnp.arange(16.0).reshape(4, 4))}}
  scores = criteria.magnitude_scores(params)
  glob = select.topk_masks(scores, 0.5, scope='global')
  assert _zeros(glob['small']['kernel']) == 16
  assert _zeros(glob['big']['kernel']) == 0
  layer = select.topk_masks(scores, 0.5, scope='layerwise')
  assert _zeros(layer['small']['kernel']) == 8
  assert _zeros(layer['big']['kernel']) == 8
  # Within each layer, the smaller half goes.
  test_utils.assert_equal(layer['big']['kernel'].ravel(), [0] * 8 + [1] * 8)


def test_erk_densities_sum_to_target_and_cap_at_one():
  scores = {'tiny': jnp.ones((4, 4)), 'large': jnp.ones((100, 100)), 'skip': None}
  dens = select.erk_densities(scores, 0.5)
  assert dens['skip'] is None
  assert dens['tiny'] == 1.0  # uncapped it would be ~12
  total = 16 * dens['tiny'] + 10000 * dens['large']
  test_utils.assert_close(total, 0.5 * 10016)
  test_utils.assert_close(dens['large'], (5008 - 16) / 10000)


def test_erk_densities_are_proportional_to_erk_ratio_when_uncapped():
  scores = {'a': jnp.ones((20, 30)), 'b': jnp.ones((30, 40)), 'c': jnp.ones((3, 3, 8, 16))}
  dens = select.erk_densities(scores, 0.8)
  sizes = {'a': 600, 'b': 1200, 'c': 1152}
  raw = {'a': 50 / 600, 'b': 70 / 1200, 'c': 30 / 1152}
  test_utils.assert_close(sum(dens[k] * sizes[k] for k in sizes), 0.2 * sum(sizes.values()))
  assert all(0 < d < 1 for d in dens.values())
  test_utils.assert_close(dens['a'] / dens['b'], raw['a'] / raw['b'])
  test_utils.assert_close(dens['c'] / dens['b'], raw['c'] / raw['b'])
  # sparsity 0 keeps everything dense.
  assert all(d == 1.0 for d in select.erk_densities(scores, 0.0).values())


def test_topk_erk_realises_erk_layer_sparsities():
  scores = criteria.magnitude_scores(_params())
  masks = select.topk_masks(scores, 0.7, scope='layerwise', distribution='erk')
  dens = select.erk_densities(scores, 0.7)
  expected_zeros = total = 0
  for name in ('Conv_0', 'Dense_0', 'Dense_1'):
    m = masks[name]['kernel']
    assert _zeros(m) == math.floor((1 - dens[name]['kernel']) * m.size + 0.5)
    expected_zeros, total = expected_zeros + _zeros(m), total + m.size
  # The total is 0.7 up to per-layer rounding; exactly the sum of the layers' counts.
  assert float(sparsity.mask_sparsity(masks)) == np.float32(expected_zeros / total)
  with pytest.raises(ValueError, match='layerwise'):
    select.topk_masks(scores, 0.7, scope='global', distribution='erk')


@pytest.mark.parametrize('bad', [-0.1, 1.0, 1.5, float('nan')])
def test_invalid_sparsity_raises_naming_the_argument(bad):
  params = _params()
  scores = criteria.magnitude_scores(params)
  with pytest.raises(ValueError, match='sparsity'):
    select.topk_masks(scores, bad)
  with pytest.raises(ValueError, match='sparsity'):
    select.unit_masks(params, criteria.unit_norm_scores(params), bad)
  with pytest.raises(ValueError, match='sparsity'):
    select.erk_densities(scores, bad)


def test_invalid_scope_and_distribution_list_valid_names():
  scores = criteria.magnitude_scores(_params())
  with pytest.raises(ValueError, match="'global', 'layerwise'"):
    select.topk_masks(scores, 0.5, scope='local')
  with pytest.raises(ValueError, match="'uniform', 'erk'"):
    select.topk_masks(scores, 0.5, scope='layerwise', distribution='er')


def test_unit_masks_zero_whole_columns_filters_and_biases():
  params = _params()
  masks = select.unit_masks(params, criteria.unit_norm_scores(params), 0.5)
  for name, units in (('Conv_0', 4), ('Dense_0', 6), ('Dense_1', 3)):
    kernel_mask = np.asarray(masks[name]['kernel'])
    assert kernel_mask.shape == params[name]['kernel'].shape
    unit = kernel_mask.reshape(-1, units)
    # Every unit is either entirely kept or entirely removed.
    assert np.all((unit == unit[:1]))
    assert int(np.sum(unit[0] == 0)) == math.floor(0.5 * units + 0.5)
    test_utils.assert_equal(masks[name]['bias'], unit[0])
  # The removed Dense_0 columns are the ones with the smallest L1 norm.
  norms = np.sum(np.abs(np.asarray(params['Dense_0']['kernel'])), axis=0)
  removed = np.flatnonzero(np.asarray(masks['Dense_0']['bias']) == 0)
  assert set(removed) == set(np.argsort(norms)[:3])
  pruned = apply_masks(params, masks)
  assert np.all(np.asarray(pruned['Dense_0']['kernel'])[:, removed] == 0)
  assert np.all(np.asarray(pruned['Dense_0']['bias'])[removed] == 0)


def test_unit_masks_without_bias_and_global_scope():
  params = _params()
  unit_scores = criteria.unit_norm_scores(params)
  masks = select.unit_masks(params, unit_scores, 0.5, mask_bias=False)
  assert all(masks[name]['bias'] is None for name in params)
  glob = select.unit_masks(params, unit_scores, 0.5, scope='global')
  total_zero_units = sum(_zeros(glob[n]['bias']) for n in params)
  assert total_zero_units == math.floor(0.5 * 13 + 0.5)
  bad = dict(unit_scores, Dense_1={'kernel': jnp.ones(5), 'bias': None})
  with pytest.raises(ValueError, match='Dense_1'):
    select.unit_masks(params, bad, 0.5)


def test_jit_and_no_jit_give_equal_masks():
  params = _params()
  scores = criteria.magnitude_scores(params)
  unit_scores = criteria.unit_norm_scores(params)
  topk = jax.jit(select.topk_masks, static_argnames=('sparsity', 'scope', 'distribution'))
  for kwargs in ({'scope': 'global'}, {'scope': 'layerwise'},
                 {'scope': 'layerwise', 'distribution': 'erk'}):
    test_utils.assert_trees_all_equal(topk(scores, sparsity=0.6, **kwargs),
                                      select.topk_masks(scores, 0.6, **kwargs))
  units = jax.jit(select.unit_masks, static_argnames=('sparsity', 'scope', 'mask_bias'))
  test_utils.assert_trees_all_equal(units(params, unit_scores, sparsity=0.5),
                                    select.unit_masks(params, unit_scores, 0.5))
  count = jax.jit(sparsity.nonzero_count)
  masks = select.topk_masks(scores, 0.6)
  test_utils.assert_equal(count(params, masks), sparsity.nonzero_count(params, masks))


def test_traced_sparsity_from_schedule_matches_static_without_recompiling():
  scores = criteria.magnitude_scores(_params())
  schedule = schedules.polynomial_schedule(0.8, begin_step=0, end_step=10)
  counter = test_utils.CompileCounter()

  @jax.jit
  @counter.wrap
  def masks_at(scores, step):
    return select.topk_masks(scores, schedule(step), scope='layerwise')

  for step in (0, 3, 10):
    expected = select.topk_masks(scores, float(schedule(step)), scope='layerwise')
    test_utils.assert_trees_all_equal(masks_at(scores, step), expected)
  assert counter.count == 1
