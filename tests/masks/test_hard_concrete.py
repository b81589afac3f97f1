"""Hard-concrete gates: closed form vs Monte Carlo, custom derivative, exact 0/1, gate shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import noise
from metaprune_jax.masks import sparsity
from tests import test_utils
from tests.masks import trees

HC = hard_concrete.HardConcrete()


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
  gates = hard_concrete.init_gate_logits(trees.mlp_params(), granularity)
  assert gates['Dense_0']['bias'] is None and gates['Dense_1']['bias'] is None
  assert [gates['Dense_0']['kernel'].shape, gates['Dense_1']['kernel'].shape] == shapes


def test_dense_layers_are_left_ungated():
  spec = hard_concrete.default_granularity('weight', dense_layers=('Dense_1',))
  gates = hard_concrete.init_gate_logits(trees.mlp_params(), spec)
  assert gates['Dense_1']['kernel'] is None and gates['Dense_0']['kernel'] is not None
  assert sparsity.num_gated_weights(trees.mlp_params(), gates) == 15


def test_unknown_granularity_is_rejected():
  with pytest.raises(ValueError, match='granularity'):
    hard_concrete.init_gate_logits(trees.mlp_params(), 'per_cat')


@pytest.mark.parametrize('granularity', ['weight', 'hidden_unit', 'weight+hidden_unit'])
def test_rnn_gate_specs(granularity):
  params = trees.rnn_params()
  logits = hard_concrete.init_gate_logits(params, hard_concrete.default_granularity(granularity))
  gated = {'/'.join(hard_concrete.path_names(p)) for p, leaf in jax.tree_util.tree_leaves_with_path(logits)}
  kernels = {'input_kernel', 'recurrent_kernel', 'readout/kernel'}
  expected = {'weight': kernels, 'hidden_unit': {'unit_scale'},
              'weight+hidden_unit': kernels | {'unit_scale'}}[granularity]
  assert gated == expected
  assert logits['unit_scale'] is None or logits['unit_scale'].shape == (6,)
