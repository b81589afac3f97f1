"""Tests for metaprune_jax.nets.rnn."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.masks import masking
from metaprune_jax.masks import sparsity
from metaprune_jax.nets import rnn
from tests import test_utils

IN, HIDDEN, OUT, BATCH, TIME = 3, 5, 2, 4, 7
CELLS = {'lstm': (rnn.init_lstm, functools.partial(rnn.rnn_apply, cell='lstm'), rnn.lstm_cell),
         'gru': (rnn.init_gru, functools.partial(rnn.rnn_apply, cell='gru'), rnn.gru_cell)}
# Jitted applies keep the tests fast; test_jit_equals_no_jit checks the eager path.
JITTED = {cell: jax.jit(apply, static_argnames=('last_only',))
          for cell, (_, apply, _) in CELLS.items()}


def _setup(cell, seed=0):
  init, _, _ = CELLS[cell]
  param_key, input_key = jax.random.split(jax.random.key(seed))
  params = init(param_key, IN, HIDDEN, OUT)
  inputs = jax.random.normal(input_key, (BATCH, TIME, IN))
  return params, inputs, JITTED[cell]


def _hidden_states(params, inputs, cell):
  """Python loop over time of the cell (the reference): ``[time, batch, H]``."""
  step = jax.jit(CELLS[cell][2])
  carry = rnn.initial_carry(params, inputs.shape[0], cell)
  hs = []
  for t in range(inputs.shape[1]):
    carry, h = step(params, carry, rnn.input_projection(params, inputs[:, t]))
    hs.append(h)
  return jnp.stack(hs)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_init_shapes_follow_documented_layout(cell):
  params, _, _ = _setup(cell)
  gates = rnn.NUM_GATES[cell]
  shapes = jax.tree.map(jnp.shape, params)
  assert shapes == {'input_kernel': (IN, gates * HIDDEN),
                    'recurrent_kernel': (HIDDEN, gates * HIDDEN),
                    'bias': (gates * HIDDEN,),
                    'readout': {'kernel': (HIDDEN, OUT), 'bias': (OUT,)}}


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_all_ones_masks_equal_dense_exactly(cell):
  params, inputs, apply = _setup(cell)
  ones = jax.tree.map(jnp.ones_like, params)
  test_utils.assert_equal(apply(params, inputs, ones), apply(params, inputs))
  unit_ones = rnn.unit_masks_from_gates(params, jnp.ones((HIDDEN,)), cell)
  test_utils.assert_equal(apply(params, inputs, unit_ones), apply(params, inputs))


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_scan_equals_python_loop_of_cell(cell):
  params, inputs, apply = _setup(cell)
  hs = _hidden_states(params, inputs, cell)
  expected = rnn.readout(params, jnp.swapaxes(hs, 0, 1))
  test_utils.assert_close(apply(params, inputs), expected, rtol=1e-5, atol=1e-6)
  test_utils.assert_close(apply(params, inputs, last_only=True), expected[:, -1],
                          rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_removed_unit_has_no_influence(cell):
  params, inputs, apply = _setup(cell)
  unit = 2
  gates = jnp.ones((HIDDEN,)).at[unit].set(0.0)
  masks = rnn.unit_masks_from_gates(params, gates, cell)
  # Perturb everything that belongs to the removed unit (all its gate columns,
  # its recurrent row, its readout row) with large random values.
  num_gates = rnn.NUM_GATES[cell]
  cols = jnp.arange(num_gates) * HIDDEN + unit
  keys = jax.random.split(jax.random.key(7), 5)
  noisy = dict(params)
  noisy['input_kernel'] = params['input_kernel'].at[:, cols].add(
      10 * jax.random.normal(keys[0], (IN, num_gates)))
  noisy['recurrent_kernel'] = (
      params['recurrent_kernel']
      .at[:, cols].add(10 * jax.random.normal(keys[1], (HIDDEN, num_gates)))
      .at[unit, :].add(10 * jax.random.normal(keys[2], (num_gates * HIDDEN,))))
  noisy['bias'] = params['bias'].at[cols].add(10 * jax.random.normal(keys[3], (num_gates,)))
  noisy['readout'] = {'kernel': params['readout']['kernel'].at[unit].add(
      10 * jax.random.normal(keys[4], (OUT,))), 'bias': params['readout']['bias']}
  out = apply(params, inputs, masks)
  test_utils.assert_equal(apply(noisy, inputs, masks), out)
  # The perturbation matters without the mask (the test can fail).
  assert not np.allclose(apply(noisy, inputs), apply(params, inputs))
  # The removed unit's hidden state stays exactly 0 at every step.
  hs = _hidden_states(masking.apply_masks(noisy, masks), inputs, cell)
  test_utils.assert_equal(hs[:, :, unit], jnp.zeros((TIME, BATCH)))
  assert np.all(np.abs(np.asarray(hs[:, :, :unit])) > 0)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_weight_masks_gate_input_and_recurrent_separately(cell):
  params, inputs, apply = _setup(cell)
  other_inputs = inputs + jax.random.normal(jax.random.key(3), inputs.shape)
  dense_leaves = jax.tree.map(lambda _: None, params)
  no_input = dict(dense_leaves, input_kernel=jnp.zeros_like(params['input_kernel']))
  # Without input weights the outputs no longer depend on the inputs ...
  test_utils.assert_equal(apply(params, other_inputs, no_input), apply(params, inputs, no_input))
  # ... and a recurrent mask touches only the recurrent matrix.
  no_recurrence = dict(dense_leaves,
                       recurrent_kernel=jnp.zeros_like(params['recurrent_kernel']))
  zeroed = dict(params, recurrent_kernel=jnp.zeros_like(params['recurrent_kernel']))
  out = apply(params, inputs, no_recurrence)
  test_utils.assert_equal(out, apply(zeroed, inputs))
  assert not np.allclose(out, apply(params, inputs))
  assert not np.allclose(out, apply(params, other_inputs, no_recurrence))


def test_unit_masks_prune_every_weight_of_the_unit():
  params, _, _ = _setup('lstm')
  test_utils.assert_equal(sparsity.num_pruned(params, None) / masking.count_params(params), 0.0)
  masks = rnn.unit_masks_from_gates(params, jnp.ones((HIDDEN,)).at[0].set(0.0), 'lstm')
  g = rnn.NUM_GATES['lstm']
  removed = (IN * g  # input-kernel columns
             + HIDDEN * g + g * HIDDEN - g  # recurrent columns + row, overlap counted once
             + g  # bias
             + OUT)  # readout row
  expected = removed / masking.count_params(params)
  test_utils.assert_close(sparsity.num_pruned(params, masks) / masking.count_params(params), expected)
  # A per-weight mask with three zeros in the input kernel.
  weight_masks = jax.tree.map(lambda _: None, params)
  weight_masks['input_kernel'] = jnp.ones_like(params['input_kernel']).at[0, :3].set(0.0)
  test_utils.assert_close(sparsity.num_pruned(params, weight_masks) / masking.count_params(params),
                          3 / masking.count_params(params))


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_gradients_reach_params_and_unit_gates(cell):
  params, inputs, apply = _setup(cell)

  def loss(params, gates):
    masks = rnn.unit_masks_from_gates(params, gates, cell)
    return jnp.mean(apply(params, inputs, masks) ** 2)

  grads, gate_grads = jax.grad(loss, argnums=(0, 1))(params, jnp.full((HIDDEN,), 0.5))
  test_utils.assert_all_finite((grads, gate_grads))
  for name, leaf in jax.tree_util.tree_leaves_with_path(grads):
    assert np.any(np.asarray(leaf) != 0), f'zero gradient at {name}'
  assert np.all(np.asarray(gate_grads) != 0)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_jit_equals_no_jit(cell):
  params, inputs, _ = _setup(cell)
  apply = CELLS[cell][1]
  masks = rnn.unit_masks_from_gates(params, jnp.array([1., 0., 1., 1., 0.]), cell)
  jitted = jax.jit(apply, static_argnames=('last_only',))
  test_utils.assert_close(jitted(params, inputs, masks), apply(params, inputs, masks),
                          rtol=1e-5, atol=1e-6)
  test_utils.assert_close(jitted(params, inputs, masks, last_only=True),
                          apply(params, inputs, masks, last_only=True), rtol=1e-5, atol=1e-6)


def test_bad_arguments_raise_clear_errors():
  params, inputs, _ = _setup('lstm')
  with pytest.raises(ValueError, match='cell'):
    rnn.rnn_apply(params, inputs, cell='rnn')
  with pytest.raises(ValueError, match='cell'):
    rnn.rnn_apply(params, inputs, cell='gru')  # LSTM params into a GRU.
  with pytest.raises(ValueError, match='unit_gates'):
    rnn.unit_masks_from_gates(params, jnp.ones((HIDDEN + 1,)), 'lstm')
  with pytest.raises(ValueError, match='inputs'):
    rnn.rnn_apply(params, inputs[0], cell='lstm')


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_unit_scale_of_ones_equals_plain_net(cell):
  init, _, _ = CELLS[cell]
  params, inputs, apply = _setup(cell)
  scaled = init(jax.random.split(jax.random.key(0))[0], IN, HIDDEN, OUT, unit_scale=True)
  test_utils.assert_equal(scaled['unit_scale'], jnp.ones((HIDDEN,)))
  test_utils.assert_equal(apply(scaled, inputs), apply(params, inputs))


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_masked_unit_scale_removes_the_unit_from_every_output(cell):
  init, _, _ = CELLS[cell]
  params, inputs, apply = _setup(cell)
  params = dict(params, unit_scale=jnp.linspace(0.5, 1.5, HIDDEN))  # A trained gain, not just ones.
  unit = 3
  masks = jax.tree.map(lambda _: None, params)
  masks['unit_scale'] = jnp.ones((HIDDEN,)).at[unit].set(0.0)
  num_gates = rnn.NUM_GATES[cell]
  cols = jnp.arange(num_gates) * HIDDEN + unit
  noisy = dict(params)
  noisy['input_kernel'] = params['input_kernel'].at[:, cols].set(9.0)
  noisy['recurrent_kernel'] = params['recurrent_kernel'].at[:, cols].set(-7.0).at[unit].set(5.0)
  noisy['bias'] = params['bias'].at[cols].set(3.0)
  noisy['readout'] = dict(params['readout'], kernel=params['readout']['kernel'].at[unit].set(11.0))
  noisy['unit_scale'] = params['unit_scale'].at[unit].set(4.0)
  out = apply(params, inputs, masks)
  test_utils.assert_equal(apply(noisy, inputs, masks), out)
  assert not np.allclose(apply(noisy, inputs), apply(params, inputs))
  # The same as the explicit structured masks of unit_masks_from_gates.
  explicit = rnn.unit_masks_from_gates(params, params['unit_scale'] * masks['unit_scale'], cell)
  plain = {k: v for k, v in params.items() if k != 'unit_scale'}
  del explicit['unit_scale']
  test_utils.assert_close(out, apply(plain, inputs, explicit), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_final_hidden_is_last_scanned_state(cell):
  params, inputs, _ = _setup(cell)
  hs = _hidden_states(params, inputs, cell)
  test_utils.assert_close(rnn.final_hidden(params, inputs, cell=cell), hs[-1], rtol=1e-5, atol=1e-6)


def test_unit_keep_factors_count_each_weight_once():
  params, _, _ = _setup('lstm')
  params = dict(params, unit_scale=jnp.ones((HIDDEN,)))
  keep = jnp.array([0.5, 1.0, 0.0, 1.0, 1.0])
  factors = rnn.unit_keep_factors(params, keep)
  assert factors['readout']['bias'] is None
  rec = np.asarray(factors['recurrent_kernel'])
  assert rec[0, 0] == 0.5 and rec[0, HIDDEN] == 0.5  # Same unit in row and column: its own gate once.
  assert rec[0, 1] == 0.5 and rec[1, 0] == 0.5 and rec[0, 2] == 0.0 and rec[3, 4] == 1.0
  test_utils.assert_equal(factors['unit_scale'], keep)
  test_utils.assert_equal(factors['readout']['kernel'][:, 0], keep)
