"""Hardening: exact target sparsity, lowest logits pruned, bisection equals a stable sort."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import harden
from metaprune_jax.masks import sparsity
from metaprune_jax.nets import rnn
from tests import test_utils
from tests.masks import trees

HC = hard_concrete.HardConcrete()
EXPAND = rnn.unit_keep_factors


@pytest.mark.parametrize('granularity', ['weight', 'out_unit'])
@pytest.mark.parametrize('target', [0.0, 0.5, 0.9])
def test_harden_closes_the_lowest_logits_but_one_per_leaf_up_to_the_target(granularity, target):
  params = trees.mlp_params()
  logits = jax.tree.map(lambda g: jax.random.normal(jax.random.key(g.size), g.shape),
                        hard_concrete.init_gate_logits(params, granularity))
  hard = harden.harden(params, logits, target)
  flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(logits)])
  kernels = [params['Dense_0']['kernel'], params['Dense_1']['kernel']]
  sizes = np.concatenate([np.full(la.size, k.size // la.size) for k, la in zip(kernels, jax.tree.leaves(logits))])
  floor = np.concatenate([_top_of_leaf(x) for x in jax.tree.leaves(logits)])
  # The documented rule, written out: close gates in ascending (stable) order, skipping each leaf's highest,
  # until ceil(target * 25) weights are pruned or only the kept ones are left.
  need = np.ceil(target * 25 - 1e-9)
  expected_closed = np.zeros(flat.size, bool)
  for i in np.argsort(flat, kind='stable'):
    if np.sum(sizes[expected_closed]) >= need:
      break
    expected_closed[i] = not floor[i]
  kept = np.concatenate([np.ravel(x) for x in jax.tree.leaves(hard)]) > 0
  test_utils.assert_equal(kept, ~expected_closed)
  realised = float(sparsity.realised_sparsity(params, hard, HC))
  assert realised == np.float32(np.sum(sizes[expected_closed]) / 25)
  if granularity == 'weight':
    assert realised == np.float32(need / 25)  # 25 weights gated one by one: the exact count is reachable.
  for z in jax.tree.leaves(hard_concrete.deterministic_gates(hard, HC)):
    assert set(np.unique(np.asarray(z))) <= {0.0, 1.0}


def _top_of_leaf(logits):
  """``[size]`` bool: the last position of the leaf's maximum (the gate a stable ascending sort ranks highest)."""
  values = np.ravel(np.asarray(logits))
  top = np.zeros(values.size, bool)
  top[values.size - 1 - np.argmax(values[::-1])] = True
  return top


def _open_per_leaf(hard):
  return [int(np.sum(np.asarray(x) > 0)) for x in jax.tree.leaves(hard)]


def test_out_unit_harden_keeps_one_unit_of_a_layer_the_global_threshold_would_empty():
  params = trees.mlp_params()  # out_unit gates: Dense_0 [5] x 3 weights, Dense_1 [2] x 5 weights; N = 25.
  logits = {'Dense_0': {'kernel': jnp.array([1.0, 2.0, 3.0, 4.0, 5.0]), 'bias': None},
            'Dense_1': {'kernel': jnp.array([-2.0, -1.0]), 'bias': None}}
  # ceil(0.4 * 25) = 10 weights: the global threshold alone closes both Dense_1 units (5 + 5), emptying it.
  hard = harden.harden(params, logits, 0.4)
  test_utils.assert_equal(hard['Dense_1']['kernel'] > 0, [False, True])  # Its highest unit stays open.
  # The 5 weights it keeps are made up by Dense_0's two lowest units: 5 + 3 + 3 = 11 >= 10, the fewest gates.
  test_utils.assert_equal(hard['Dense_0']['kernel'] > 0, [False, False, True, True, True])
  assert float(sparsity.realised_sparsity(params, hard, HC)) == np.float32(11 / 25)


def test_in_unit_harden_keeps_one_input_per_layer_and_caps_an_unreachable_target():
  params = trees.mlp_params()  # in_unit gates: Dense_0 [3, 1] x 5 weights, Dense_1 [5, 1] x 2 weights.
  logits = {'Dense_0': {'kernel': jnp.array([[0.0], [3.0], [3.0]]), 'bias': None},
            'Dense_1': {'kernel': jnp.array([[1.0], [2.0], [1.0], [2.0], [1.0]]), 'bias': None}}
  # 0.9 * 25 needs 23 pruned; one input per layer open leaves at most 25 - 5 - 2 = 18.
  hard = jax.jit(harden.harden, static_argnums=(2,))(params, logits, 0.9)
  test_utils.assert_equal(hard['Dense_0']['kernel'][:, 0] > 0, [False, False, True])  # Last of the tied maxima.
  test_utils.assert_equal(hard['Dense_1']['kernel'][:, 0] > 0, [False, False, False, True, False])
  assert float(sparsity.realised_sparsity(params, hard, HC)) == np.float32(18 / 25)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_hidden_unit_harden_keeps_the_highest_hidden_unit(cell):
  params = trees.rnn_params(cell, hidden=4)
  logits = hard_concrete.init_gate_logits(params, hard_concrete.default_granularity('hidden_unit'))
  logits = jax.tree.map(lambda la: jnp.array([0.5, -1.0, 2.0, -3.0]), logits)
  hard = harden.harden(params, logits, 0.99, expand_units=EXPAND)
  assert _open_per_leaf(hard) == [1]
  test_utils.assert_equal(jax.tree.leaves(hard)[0] > 0, [False, False, True, False])
  effective = trees.effective_keep(params, hard_concrete.deterministic_gates(hard, HC))
  assert all(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(effective))  # No leaf emptied.


@pytest.mark.parametrize('granularity', ['weight', 'out_unit', 'in_unit'])
def test_no_gated_leaf_is_emptied_at_any_target(granularity):
  params = trees.mlp_params()
  logits = jax.tree.map(lambda g: jax.random.normal(jax.random.key(3), g.shape),
                        hard_concrete.init_gate_logits(params, granularity))
  for target in (0.5, 0.8, 0.95, 0.99):
    assert min(_open_per_leaf(harden.harden(params, logits, target))) >= 1


@pytest.mark.parametrize('seed', range(5))
def test_bisection_threshold_prunes_what_a_stable_sort_prunes(seed):
  rng = np.random.default_rng(seed)
  values = jnp.asarray(rng.integers(-5, 5, size=200).astype(np.float32) * 0.5)  # Many ties, signs mixed.
  sizes = jnp.asarray(rng.integers(1, 4, size=200).astype(np.int32))
  for need in (0, 1, 37, int(sizes.sum()) // 2, int(sizes.sum()) - 1):
    order = np.argsort(np.asarray(values), kind='stable')
    pruned_before = np.cumsum(np.asarray(sizes)[order]) - np.asarray(sizes)[order]
    expected = np.zeros(200, bool)
    expected[order] = pruned_before < need
    test_utils.assert_equal(harden._lowest_up_to(values, sizes, need), expected)


@pytest.mark.parametrize('granularity,target', [('hidden_unit', 0.7), ('weight+hidden_unit', 0.9)])
def test_coupled_harden_prunes_the_fewest_gates_that_reach_the_target(granularity, target):
  params = trees.rnn_params('lstm', hidden=8)
  logits = hard_concrete.init_gate_logits(params, hard_concrete.default_granularity(granularity))
  logits = jax.tree.map(lambda la: jax.random.normal(jax.random.key(la.size + 1), la.shape), logits)
  hard = jax.jit(functools.partial(harden.harden, expand_units=EXPAND), static_argnums=(2,))(params, logits, target)
  assert float(sparsity.realised_sparsity(params, hard, HC, expand_units=EXPAND)) >= target
  # Reopening the highest-ranked closed gate falls short of the target: no gate closed needlessly.
  flat_logits = jnp.concatenate([x.ravel() for x in jax.tree.leaves(logits)])
  flat_hard = jnp.concatenate([x.ravel() for x in jax.tree.leaves(hard)])
  closed = np.flatnonzero(np.asarray(flat_hard) < 0)
  reopen = closed[np.argmax(np.asarray(flat_logits)[closed])]
  leaves, treedef = jax.tree.flatten(hard)
  flat = flat_hard.at[reopen].set(20.0)
  sizes = np.cumsum([0] + [x.size for x in leaves])
  fewer = jax.tree.unflatten(treedef, [flat[a:b].reshape(x.shape) for a, b, x in zip(sizes[:-1], sizes[1:], leaves)])
  assert float(sparsity.realised_sparsity(params, fewer, HC, expand_units=EXPAND)) < target
  # Closed gates are exactly the lowest logits.
  assert np.max(np.asarray(flat_logits)[closed]) <= np.min(np.delete(np.asarray(flat_logits), closed))


@pytest.mark.parametrize('target', [0.3, 0.5, 0.75])
def test_harden_counting_gates_closes_that_fraction_of_the_gates_lowest_first(target):
  params = trees.mlp_params()  # out_unit gates: 5 of 3 weights (Dense_0), 2 of 5 weights (Dense_1).
  logits = {'Dense_0': {'kernel': jnp.array([0.5, -1.0, 2.0, -3.0, 1.0]), 'bias': None},
            'Dense_1': {'kernel': jnp.array([-2.0, 3.0]), 'bias': None}}
  hard = harden.harden(params, logits, target, count='gates')
  closed = np.concatenate([np.ravel(x) for x in jax.tree.leaves(hard)]) < 0
  need = min(int(np.ceil(target * 7 - 1e-9)), 5)  # Gates, not weights: 7 in all, one per leaf stays open.
  assert closed.sum() == need
  order = [3, 5, 1, 0, 4]  # Ascending logits, each leaf's highest (2.0, 3.0) never closed.
  np.testing.assert_array_equal(np.flatnonzero(closed), np.sort(order[:need]))
  test_utils.assert_close(sparsity.realised_sparsity(params, hard, HC, count='gates'), need / 7)


@pytest.mark.parametrize('count', ['weights', 'gates'])
def test_layerwise_hardening_closes_the_target_share_of_every_leaf_on_its_own(count):
  params = trees.mlp_params()  # out_unit gates: 5 of 3 weights (Dense_0), 2 of 5 weights (Dense_1).
  logits = {'Dense_0': {'kernel': jnp.array([0.5, -1.0, 2.0, -3.0, 1.0]), 'bias': None},
            'Dense_1': {'kernel': jnp.array([-2.0, 3.0]), 'bias': None}}
  hard = harden.harden(params, logits, 0.6, scope='layerwise', count=count)
  # Each leaf alone: ceil(0.6 * 5) = 3 of Dense_0's gates (its lowest: -3, -1, 0.5), ceil(0.6 * 2) = 2 of Dense_1's
  # capped at 1 (its highest stays open). Global hardening would close Dense_1's -2 before Dense_0's 0.5.
  np.testing.assert_array_equal(np.asarray(hard['Dense_0']['kernel']) < 0, [True, True, False, True, False])
  np.testing.assert_array_equal(np.asarray(hard['Dense_1']['kernel']) < 0, [True, False])
  assert hard['Dense_0']['bias'] is None
  for leaf in ('Dense_0', 'Dense_1'):  # A leaf alone hardens the same either way.
    alone = harden.harden({leaf: params[leaf]}, {leaf: logits[leaf]}, 0.6, count=count)
    np.testing.assert_array_equal(alone[leaf]['kernel'], hard[leaf]['kernel'])
  with pytest.raises(ValueError, match='harden_scope'):
    harden.harden(params, logits, 0.6, scope='per_layer')
  rnn_params = trees.rnn_params('gru')
  rnn_logits = hard_concrete.init_gate_logits(rnn_params, hard_concrete.default_granularity('hidden_unit'))
  with pytest.raises(ValueError, match="scope='global'"):
    harden.harden(rnn_params, rnn_logits, 0.5, expand_units=EXPAND, scope='layerwise')
