"""Sparsity counters: expected vs Monte Carlo, structured groups, coupled hidden-unit counts, mask trees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import sparsity
from metaprune_jax.nets import rnn
from tests import test_utils
from tests.masks import trees

HC = hard_concrete.HardConcrete()
EXPAND = rnn.unit_keep_factors


def test_expected_l0_counts_structured_groups():
  params = trees.mlp_params()
  gates = hard_concrete.init_gate_logits(params, 'out_unit', init_logit=0.0)
  p = float(hard_concrete.prob_nonzero(jnp.float32(0.0), HC))
  total = sparsity.expected_l0(params, gates, HC)['total']
  # 5 output units with 3 weights each, 2 output units with 5 weights each.
  test_utils.assert_close(total, p * (5 * 3 + 2 * 5), rtol=1e-6)
  test_utils.assert_close(sparsity.expected_density(params, gates, HC), p, rtol=1e-6)


def test_expected_l0_matches_monte_carlo_over_a_tree():
  params = trees.mlp_params()
  key = jax.random.key(3)
  gates = jax.tree.map(lambda g: jax.random.normal(key, g.shape) * 2.0,
                       hard_concrete.init_gate_logits(params, 'weight'))
  samples = jax.vmap(lambda k: hard_concrete.sample_gates(gates, k, HC))(jax.random.split(key, 20_000))
  mc = sum(float(jnp.mean(jnp.sum(s != 0.0, axis=tuple(range(1, s.ndim)))))
           for s in jax.tree.leaves(samples))
  test_utils.assert_close(sparsity.expected_l0(params, gates, HC)['total'], mc, rtol=1e-2)


def test_realised_sparsity_and_nonzero_params():
  params = trees.mlp_params()
  gates = hard_concrete.init_gate_logits(params, 'out_unit')
  gates['Dense_0']['kernel'] = gates['Dense_0']['kernel'].at[:2].set(-10.0)  # Prune 2 of 5 units.
  test_utils.assert_close(sparsity.realised_sparsity(params, gates, HC), 6 / 25)
  # 15 + 10 gated weights, 6 pruned; biases (7) always count.
  assert int(sparsity.nonzero_params(params, gates, HC)) == 25 - 6 + 7


def test_counting_gates_weighs_every_gate_once_whatever_it_switches():
  params = trees.mlp_params()  # out_unit gates: 5 units of 3 weights, 2 units of 5 weights.
  gates = jax.tree.map(lambda g: jax.random.normal(jax.random.key(g.size), g.shape) * 2.0,
                       hard_concrete.init_gate_logits(params, 'out_unit'))
  probs = np.concatenate([np.ravel(hard_concrete.prob_nonzero(g, HC)) for g in jax.tree.leaves(gates)])
  assert sparsity.num_gated_weights(params, gates, count='gates') == 7
  test_utils.assert_close(sparsity.expected_l0(params, gates, HC, count='gates')['total'], probs.sum(), rtol=1e-6)
  test_utils.assert_close(sparsity.expected_density(params, gates, HC, count='gates'), probs.mean(), rtol=1e-6)
  weighted = (3 * probs[:5].sum() + 5 * probs[5:].sum()) / 25  # The same gates counted by weight.
  test_utils.assert_close(sparsity.expected_density(params, gates, HC), weighted, rtol=1e-6)
  samples = jax.vmap(lambda k: hard_concrete.sample_gates(gates, k, HC))(jax.random.split(jax.random.key(1), 20_000))
  mc = np.mean(np.concatenate([np.asarray(s != 0.0).reshape(20_000, -1) for s in jax.tree.leaves(samples)], 1))
  test_utils.assert_close(sparsity.expected_density(params, gates, HC, count='gates'), mc, rtol=1e-2)
  closed = {'Dense_0': {'kernel': gates['Dense_0']['kernel'].at[:2].set(-10.0).at[2:].set(10.0), 'bias': None},
            'Dense_1': {'kernel': jnp.array([-10.0, 10.0]), 'bias': None}}
  test_utils.assert_close(sparsity.realised_sparsity(params, closed, HC, count='gates'), 3 / 7)
  test_utils.assert_close(sparsity.realised_sparsity(params, closed, HC), (2 * 3 + 5) / 25)


def test_counting_gates_refuses_unknown_counts_and_hidden_unit_gates():
  params = trees.mlp_params()
  gates = hard_concrete.init_gate_logits(params, 'out_unit')
  with pytest.raises(ValueError, match='sparsity.count'):
    sparsity.expected_density(params, gates, HC, count='channels')
  rnn_params = trees.rnn_params('gru')
  logits = hard_concrete.init_gate_logits(rnn_params, hard_concrete.default_granularity('hidden_unit'))
  with pytest.raises(ValueError, match="count='weights'"):
    sparsity.expected_density(rnn_params, logits, HC, expand_units=EXPAND, count='gates')


@pytest.mark.parametrize('granularity', ['hidden_unit', 'weight+hidden_unit'])
def test_coupled_expected_l0_matches_monte_carlo(granularity):
  params = trees.rnn_params('gru')
  logits = hard_concrete.init_gate_logits(params, hard_concrete.default_granularity(granularity))
  logits = jax.tree.map(lambda la: jax.random.uniform(jax.random.key(la.size), la.shape, minval=-2, maxval=2),
                        logits)
  touched = sparsity.num_gated_weights(params, logits, expand_units=EXPAND)
  assert touched == sum(x.size for x in jax.tree.leaves(params)) - 2  # All but the readout bias.

  def nonzero(key):
    keep = trees.effective_keep(params, hard_concrete.sample_gates(logits, key, HC))
    del keep['readout']['bias']
    return sum(jnp.sum(x != 0) for x in jax.tree.leaves(keep))
  counts = jax.jit(jax.vmap(nonzero))(jax.random.split(jax.random.key(3), 4000))
  expected = sparsity.expected_l0(params, logits, HC, expand_units=EXPAND)['total']
  test_utils.assert_close(np.mean(np.asarray(counts, np.float64)), expected, rtol=0.02)
  test_utils.assert_close(sparsity.expected_density(params, logits, HC, expand_units=EXPAND), expected / touched,
                          rtol=1e-6)


def test_coupled_realised_sparsity_counts_what_is_gone():
  params = trees.rnn_params('lstm')
  logits = hard_concrete.init_gate_logits(params, hard_concrete.default_granularity('weight+hidden_unit'))
  logits = jax.tree.map(lambda la: jnp.where(jax.random.uniform(jax.random.key(la.size), la.shape) < 0.3,
                                             -10.0, 10.0), logits)
  keep = trees.effective_keep(params, hard_concrete.deterministic_gates(logits, HC))
  zeros = sum(int(jnp.sum(x == 0)) for x in jax.tree.leaves(keep))
  touched = sparsity.num_gated_weights(params, logits, expand_units=EXPAND)
  test_utils.assert_close(sparsity.realised_sparsity(params, logits, HC, expand_units=EXPAND), zeros / touched)
  total = sum(x.size for x in jax.tree.leaves(params))
  test_utils.assert_equal(sparsity.nonzero_params(params, logits, HC, expand_units=EXPAND), total - zeros)
  units_closed = float(np.mean(np.asarray(logits['unit_scale']) < 0))
  test_utils.assert_close(sparsity.unit_sparsity(logits, HC), units_closed)
  assert sparsity.unit_sparsity(hard_concrete.init_gate_logits(params, 'weight'), HC) is None


@pytest.mark.parametrize('granularity', ['hidden_unit', 'weight+hidden_unit'])
def test_pruned_per_leaf_counts_what_each_layer_loses(granularity):
  params = trees.rnn_params('lstm')
  logits = hard_concrete.init_gate_logits(params, hard_concrete.default_granularity(granularity))
  logits = jax.tree.map(lambda la: jnp.where(jax.random.uniform(jax.random.key(la.size + 1), la.shape) < 0.4,
                                             -10.0, 10.0), logits)
  gates = hard_concrete.deterministic_gates(logits, HC)
  keep = trees.effective_keep(params, gates)
  pruned = sparsity.pruned_per_leaf(params, gates, expand_units=EXPAND)
  for leaf in ('input_kernel', 'recurrent_kernel'):
    assert int(pruned[leaf]) == int(jnp.sum(keep[leaf] == 0))
  assert int(pruned['readout']['kernel']) == int(jnp.sum(keep['readout']['kernel'] == 0))
  counted = sum(int(x) for x in jax.tree.leaves(pruned))
  test_utils.assert_close(counted / sparsity.num_gated_weights(params, logits, expand_units=EXPAND),
                          sparsity.realised_sparsity(params, logits, HC, expand_units=EXPAND))
  stacked = jax.tree.map(lambda g: jnp.stack([g, jnp.ones_like(g)]), gates)  # Task 2 keeps everything.
  per_task = jax.vmap(lambda g: sparsity.pruned_per_leaf(params, g, expand_units=EXPAND))(stacked)
  assert int(per_task['recurrent_kernel'][0]) == int(pruned['recurrent_kernel'])
  assert all(int(x[1]) == 0 for x in jax.tree.leaves(per_task))


def test_pruned_per_leaf_counts_structured_groups():
  params = trees.mlp_params()
  logits = hard_concrete.init_gate_logits(params, 'out_unit')
  logits = jax.tree.map(lambda la: la.at[..., :2].set(-10.0), logits)
  pruned = sparsity.pruned_per_leaf(params, hard_concrete.deterministic_gates(logits, HC))
  for layer, leaf in params.items():
    if pruned[layer]['kernel'] is not None:
      assert int(pruned[layer]['kernel']) == 2 * leaf['kernel'].shape[0]
  assert all(pruned[layer].get('bias') is None for layer in params)


def test_mask_sparsity_and_nonzero_count():
  params = {'a': {'kernel': jnp.array([[1.0, 2.0], [0.0, 4.0]]), 'bias': jnp.ones(2)}}
  masks = {'a': {'kernel': jnp.array([[0.0, 1.0], [1.0, 1.0]]), 'bias': None}}
  test_utils.assert_close(sparsity.mask_sparsity(masks), 0.25)
  # kernel: 1 masked + 1 already zero -> 2 nonzero; bias dense: 2 nonzero.
  assert int(sparsity.nonzero_count(params, masks)) == 4
  assert int(sparsity.nonzero_count(params, None)) == 5
  test_utils.assert_close(sparsity.mask_sparsity({'a': None}), 0.0)


def test_unit_gates_without_expand_units_are_an_error():
  params = trees.rnn_params('gru')
  logits = hard_concrete.init_gate_logits(params, hard_concrete.default_granularity('hidden_unit'))
  gates = hard_concrete.deterministic_gates(logits, HC)
  for count in (lambda: sparsity.num_gated_weights(params, logits),
                lambda: sparsity.expected_density(params, logits, HC),
                lambda: sparsity.realised_sparsity(params, logits, HC),
                lambda: sparsity.nonzero_params(params, logits, HC),
                lambda: sparsity.pruned_per_leaf(params, gates),
                lambda: sparsity.nonzero_count(params, gates)):
    with pytest.raises(ValueError, match='expand_units'):
      count()
  weight_logits = hard_concrete.init_gate_logits(params, 'weight')  # No unit gates: expand_units is not needed.
  assert sparsity.num_gated_weights(params, weight_logits) == sparsity.num_gated_weights(
      params, weight_logits, expand_units=EXPAND)


def test_nonzero_count_removes_every_weight_of_a_closed_unit():
  params = trees.rnn_params('lstm')
  masks = jax.tree.map(lambda _: None, params)
  masks['unit_scale'] = jnp.ones((6,)).at[1].set(0.0)
  keep = trees.effective_keep(params, masks)
  effective = jax.tree.map(lambda p, k: p * k, params, keep)
  expected = sum(int(jnp.count_nonzero(x)) for x in jax.tree.leaves(effective))
  assert int(sparsity.nonzero_count(params, masks, expand_units=EXPAND)) == expected
  assert expected < int(sparsity.nonzero_count(params, None))
  test_utils.assert_equal(sparsity.num_pruned(params, None), 0.0)
