"""Hard-concrete gates: closed form vs Monte Carlo, exact 0/1, shapes, counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import noise
from tests import test_utils

HC = hard_concrete.HardConcrete()


def _params():
  return {'Dense_0': {'kernel': jnp.ones((3, 5)), 'bias': jnp.zeros(5)},
          'Dense_1': {'kernel': jnp.ones((5, 2)), 'bias': jnp.zeros(2)}}


@pytest.mark.parametrize('method', ['hash', 'threefry'])
def test_prob_nonzero_matches_monte_carlo(method):
  log_alpha = jnp.array([-4.0, -2.0, -0.5, 0.0, 1.0, 3.0])
  u = noise.uniform(jax.random.key(0), (200_000, 6), method=method)
  z = hard_concrete.gates_from_noise(log_alpha, u, HC)
  mc = np.mean(np.asarray(z) > 0, axis=0)
  test_utils.assert_close(mc, hard_concrete.prob_nonzero(log_alpha, HC), atol=4e-3)


def test_gates_from_noise_equals_sigmoid_form_for_several_betas():
  u = jnp.linspace(1e-4, 1 - 1e-4, 101)
  for beta in (2 / 3, 0.5, 1.0, 0.25):
    hc = hard_concrete.HardConcrete(beta=beta)
    for la in (-3.0, 0.0, 2.5):
      ref = jnp.clip(jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + la) / beta) * (hc.zeta - hc.gamma)
                     + hc.gamma, 0.0, 1.0)
      test_utils.assert_close(hard_concrete.gates_from_noise(jnp.float32(la), u, hc), ref, atol=2e-6)


def _autodiff_gates(log_alpha, u, hc=HC):
  """The gate formula with no custom derivative: what ``gates_from_noise``'s hand-written JVP must equal."""
  s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + log_alpha) / hc.beta)
  return jnp.clip(s * (hc.zeta - hc.gamma) + hc.gamma, 0.0, 1.0)


@pytest.mark.parametrize('beta', [2 / 3, 0.5])
def test_gate_derivatives_equal_autodiff_to_second_order(beta):
  """First derivatives in both arguments and the logits' second derivative (inner-loop gate adaptation)."""
  hc = hard_concrete.HardConcrete(beta=beta)
  log_alpha = jnp.linspace(-3.0, 3.0, 41)
  u = jnp.linspace(0.02, 0.98, 41)[::-1]
  weights = jnp.cos(jnp.arange(41.0))
  for gates in (hard_concrete.gates_from_noise, _autodiff_gates):
    assert jnp.all(jnp.isfinite(gates(log_alpha, u, hc)))
  first = lambda fn: jax.grad(lambda la, u: jnp.sum(weights * fn(la, u, hc) ** 2), (0, 1))  # pylint: disable=unnecessary-lambda-assignment
  for got, want in zip(first(hard_concrete.gates_from_noise)(log_alpha, u), first(_autodiff_gates)(log_alpha, u)):
    test_utils.assert_close(got, want, rtol=1e-4, atol=1e-5)
  second = lambda fn: jax.grad(lambda la: jnp.sum(jnp.sin(first(fn)(la, u)[0])))  # pylint: disable=unnecessary-lambda-assignment
  test_utils.assert_close(second(hard_concrete.gates_from_noise)(log_alpha),
                          second(_autodiff_gates)(log_alpha), rtol=1e-3, atol=1e-4)


def test_gate_derivative_is_zero_where_the_gate_is_clipped():
  u = jnp.full((2,), 0.5)
  grad = jax.grad(lambda la: jnp.sum(hard_concrete.gates_from_noise(la, u, HC)))(jnp.array([-8.0, 8.0]))
  assert float(jnp.max(jnp.abs(grad))) == 0.0


def test_gate_gradient_finite_at_extreme_logits():
  u = jnp.full((4,), 0.3)
  grad = jax.grad(lambda la: jnp.sum(hard_concrete.gates_from_noise(la, u, HC)))(
      jnp.array([-200.0, -30.0, 30.0, 200.0]))
  test_utils.assert_all_finite(grad)


def test_deterministic_gates_hit_exact_zero_and_one():
  z = hard_concrete.deterministic_gates({'a': jnp.array([-10.0, -3.0, 0.0, 3.0, 10.0])}, HC)['a']
  assert float(z[0]) == 0.0 and float(z[1]) == 0.0
  assert float(z[3]) == 1.0 and float(z[4]) == 1.0
  assert 0.0 < float(z[2]) < 1.0


def test_sampled_gates_put_mass_on_exact_zero_and_one():
  z = hard_concrete.sample_gates({'a': jnp.zeros((10_000,))}, jax.random.key(1), HC)['a']
  assert 0.05 < float(jnp.mean(z == 0.0)) < 0.5
  assert 0.05 < float(jnp.mean(z == 1.0)) < 0.5


@pytest.mark.parametrize('granularity,shapes', [
    ('weight', [(3, 5), (5, 2)]), ('out_unit', [(5,), (2,)]), ('in_unit', [(3, 1), (5, 1)])])
def test_init_gate_logits_shapes_and_dense_biases(granularity, shapes):
  gates = hard_concrete.init_gate_logits(_params(), granularity)
  assert gates['Dense_0']['bias'] is None and gates['Dense_1']['bias'] is None
  assert [gates['Dense_0']['kernel'].shape, gates['Dense_1']['kernel'].shape] == shapes


def test_dense_layers_are_left_ungated():
  spec = hard_concrete.default_granularity('weight', dense_layers=('Dense_1',))
  gates = hard_concrete.init_gate_logits(_params(), spec)
  assert gates['Dense_1']['kernel'] is None and gates['Dense_0']['kernel'] is not None
  assert hard_concrete.num_gated_weights(_params(), gates) == 15


def test_unknown_granularity_is_rejected():
  with pytest.raises(ValueError, match='granularity'):
    hard_concrete.init_gate_logits(_params(), 'per_cat')


def test_expected_l0_counts_structured_groups():
  params = _params()
  gates = hard_concrete.init_gate_logits(params, 'out_unit', init_logit=0.0)
  p = float(hard_concrete.prob_nonzero(jnp.float32(0.0), HC))
  total = hard_concrete.expected_l0(params, gates, HC)['total']
  # 5 output units with 3 weights each, 2 output units with 5 weights each.
  test_utils.assert_close(total, p * (5 * 3 + 2 * 5), rtol=1e-6)
  test_utils.assert_close(hard_concrete.expected_density(params, gates, HC), p, rtol=1e-6)


def test_expected_l0_matches_monte_carlo_over_a_tree():
  params = _params()
  key = jax.random.key(3)
  gates = jax.tree.map(lambda g: jax.random.normal(key, g.shape) * 2.0,
                       hard_concrete.init_gate_logits(params, 'weight'))
  samples = jax.vmap(lambda k: hard_concrete.sample_gates(gates, k, HC))(jax.random.split(key, 20_000))
  mc = sum(float(jnp.mean(jnp.sum(s != 0.0, axis=tuple(range(1, s.ndim)))))
           for s in jax.tree.leaves(samples))
  test_utils.assert_close(hard_concrete.expected_l0(params, gates, HC)['total'], mc, rtol=1e-2)


def test_realised_sparsity_and_nonzero_params():
  params = _params()
  gates = hard_concrete.init_gate_logits(params, 'out_unit')
  gates['Dense_0']['kernel'] = gates['Dense_0']['kernel'].at[:2].set(-10.0)  # Prune 2 of 5 units.
  test_utils.assert_close(hard_concrete.realised_sparsity(params, gates, HC), 6 / 25)
  # 15 + 10 gated weights, 6 pruned; biases (7) always count.
  assert int(hard_concrete.nonzero_params(params, gates, HC)) == 25 - 6 + 7


@pytest.mark.parametrize('granularity', ['weight', 'out_unit'])
@pytest.mark.parametrize('target', [0.0, 0.5, 0.9])
def test_harden_reaches_at_least_the_target_and_keeps_the_highest_logits(granularity, target):
  params = _params()
  logits = jax.tree.map(lambda g: jax.random.normal(jax.random.key(g.size), g.shape),
                        hard_concrete.init_gate_logits(params, granularity))
  hard = hard_concrete.harden(params, logits, target)
  realised = float(hard_concrete.realised_sparsity(params, hard, HC))
  assert realised >= target - 1e-6
  if granularity == 'weight':
    assert realised == pytest.approx(np.ceil(target * 25 - 1e-9) / 25)
  flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(logits)])
  kept = np.concatenate([np.ravel(x) for x in jax.tree.leaves(hard)]) > 0
  if kept.any() and (~kept).any():
    assert flat[kept].min() >= flat[~kept].max()  # Lowest logits are the ones pruned.
  for z in jax.tree.leaves(hard_concrete.deterministic_gates(hard, HC)):
    assert set(np.unique(np.asarray(z))) <= {0.0, 1.0}


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
    test_utils.assert_equal(hard_concrete._lowest_up_to(values, sizes, need), expected)


def _rnn_params(cell='lstm', hidden=6):
  from metaprune_jax.nets import rnn
  return rnn.INIT[cell](jax.random.key(0), 3, hidden, 2, unit_scale=True)


@pytest.mark.parametrize('granularity', ['weight', 'hidden_unit', 'weight+hidden_unit'])
def test_rnn_gate_specs(granularity):
  params = _rnn_params()
  logits = hard_concrete.init_gate_logits(params, hard_concrete.default_granularity(granularity))
  gated = {'/'.join(hard_concrete._path_names(p)) for p, leaf in jax.tree_util.tree_leaves_with_path(logits)}
  kernels = {'input_kernel', 'recurrent_kernel', 'readout/kernel'}
  expected = {'weight': kernels, 'hidden_unit': {'unit_scale'},
              'weight+hidden_unit': kernels | {'unit_scale'}}[granularity]
  assert gated == expected
  assert logits['unit_scale'] is None or logits['unit_scale'].shape == (6,)


def _effective_keep(params, gates):
  """0/1 (or gate-valued) effective weights: ones pushed through the gates and the net's unit expansion."""
  from metaprune_jax.nets import rnn
  ones = jax.tree.map(jnp.ones_like, params)
  return rnn.effective_params(ones, gates)


@pytest.mark.parametrize('granularity', ['hidden_unit', 'weight+hidden_unit'])
def test_coupled_expected_l0_matches_monte_carlo(granularity):
  params = _rnn_params('gru')
  logits = hard_concrete.init_gate_logits(params, hard_concrete.default_granularity(granularity))
  logits = jax.tree.map(lambda la: jax.random.uniform(jax.random.key(la.size), la.shape, minval=-2, maxval=2),
                        logits)
  touched = hard_concrete.num_gated_weights(params, logits)
  assert touched == sum(x.size for x in jax.tree.leaves(params)) - 2  # All but the readout bias.

  def nonzero(key):
    keep = _effective_keep(params, hard_concrete.sample_gates(logits, key, HC))
    del keep['readout']['bias']
    return sum(jnp.sum(x != 0) for x in jax.tree.leaves(keep))
  counts = jax.jit(jax.vmap(nonzero))(jax.random.split(jax.random.key(3), 4000))
  expected = hard_concrete.expected_l0(params, logits, HC)['total']
  test_utils.assert_close(np.mean(np.asarray(counts, np.float64)), expected, rtol=0.02)
  test_utils.assert_close(hard_concrete.expected_density(params, logits, HC), expected / touched, rtol=1e-6)


def test_coupled_realised_sparsity_counts_what_is_gone():
  params = _rnn_params('lstm')
  logits = hard_concrete.init_gate_logits(params, hard_concrete.default_granularity('weight+hidden_unit'))
  logits = jax.tree.map(lambda la: jnp.where(jax.random.uniform(jax.random.key(la.size), la.shape) < 0.3,
                                             -10.0, 10.0), logits)
  keep = _effective_keep(params, hard_concrete.deterministic_gates(logits, HC))
  zeros = sum(int(jnp.sum(x == 0)) for x in jax.tree.leaves(keep))
  touched = hard_concrete.num_gated_weights(params, logits)
  test_utils.assert_close(hard_concrete.realised_sparsity(params, logits, HC), zeros / touched)
  total = sum(x.size for x in jax.tree.leaves(params))
  test_utils.assert_equal(hard_concrete.nonzero_params(params, logits, HC), total - zeros)
  units_closed = float(np.mean(np.asarray(logits['unit_scale']) < 0))
  test_utils.assert_close(hard_concrete.unit_sparsity(logits, HC), units_closed)
  assert hard_concrete.unit_sparsity(hard_concrete.init_gate_logits(params, 'weight'), HC) is None


@pytest.mark.parametrize('granularity', ['hidden_unit', 'weight+hidden_unit'])
def test_pruned_per_leaf_counts_what_each_layer_loses(granularity):
  params = _rnn_params('lstm')
  logits = hard_concrete.init_gate_logits(params, hard_concrete.default_granularity(granularity))
  logits = jax.tree.map(lambda la: jnp.where(jax.random.uniform(jax.random.key(la.size + 1), la.shape) < 0.4,
                                             -10.0, 10.0), logits)
  gates = hard_concrete.deterministic_gates(logits, HC)
  keep = _effective_keep(params, gates)
  pruned = hard_concrete.pruned_per_leaf(params, gates)
  for leaf in ('input_kernel', 'recurrent_kernel'):
    assert int(pruned[leaf]) == int(jnp.sum(keep[leaf] == 0))
  assert int(pruned['readout']['kernel']) == int(jnp.sum(keep['readout']['kernel'] == 0))
  counted = sum(int(x) for x in jax.tree.leaves(pruned))
  test_utils.assert_close(counted / hard_concrete.num_gated_weights(params, logits),
                          hard_concrete.realised_sparsity(params, logits, HC))
  stacked = jax.tree.map(lambda g: jnp.stack([g, jnp.ones_like(g)]), gates)  # Task 2 keeps everything.
  per_task = jax.vmap(lambda g: hard_concrete.pruned_per_leaf(params, g))(stacked)
  assert int(per_task['recurrent_kernel'][0]) == int(pruned['recurrent_kernel'])
  assert all(int(x[1]) == 0 for x in jax.tree.leaves(per_task))


def test_pruned_per_leaf_counts_structured_groups():
  params = _params()
  logits = hard_concrete.init_gate_logits(params, 'out_unit')
  logits = jax.tree.map(lambda la: la.at[..., :2].set(-10.0), logits)
  pruned = hard_concrete.pruned_per_leaf(params, hard_concrete.deterministic_gates(logits, HC))
  for layer, leaf in params.items():
    if pruned[layer]['kernel'] is not None:
      assert int(pruned[layer]['kernel']) == 2 * leaf['kernel'].shape[0]
  assert all(pruned[layer].get('bias') is None for layer in params)


@pytest.mark.parametrize('granularity,target', [('hidden_unit', 0.7), ('weight+hidden_unit', 0.9)])
def test_coupled_harden_prunes_the_fewest_gates_that_reach_the_target(granularity, target):
  params = _rnn_params('lstm', hidden=8)
  logits = hard_concrete.init_gate_logits(params, hard_concrete.default_granularity(granularity))
  logits = jax.tree.map(lambda la: jax.random.normal(jax.random.key(la.size + 1), la.shape), logits)
  hard = jax.jit(hard_concrete.harden, static_argnums=(2,))(params, logits, target)
  assert float(hard_concrete.realised_sparsity(params, hard, HC)) >= target
  # Reopening the highest-ranked closed gate falls short of the target: no gate closed needlessly.
  flat_logits = jnp.concatenate([x.ravel() for x in jax.tree.leaves(logits)])
  flat_hard = jnp.concatenate([x.ravel() for x in jax.tree.leaves(hard)])
  closed = np.flatnonzero(np.asarray(flat_hard) < 0)
  reopen = closed[np.argmax(np.asarray(flat_logits)[closed])]
  leaves, treedef = jax.tree.flatten(hard)
  flat = flat_hard.at[reopen].set(20.0)
  sizes = np.cumsum([0] + [x.size for x in leaves])
  fewer = jax.tree.unflatten(treedef, [flat[a:b].reshape(x.shape) for a, b, x in zip(sizes[:-1], sizes[1:], leaves)])
  assert float(hard_concrete.realised_sparsity(params, fewer, HC)) < target
  # Closed gates are exactly the lowest logits.
  assert np.max(np.asarray(flat_logits)[closed]) <= np.min(np.delete(np.asarray(flat_logits), closed))
