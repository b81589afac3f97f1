"""Tests for metaprune_jax.export.compact_rnn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.export import compact_rnn as compact_lib
from metaprune_jax.masks import masking
from metaprune_jax.nets import rnn
from tests import test_utils

IN, HIDDEN, OUT, BATCH, TIME = 3, 8, 2, 4, 5
TOL = 1e-5
CELLS = ('lstm', 'gru')
GRANULARITIES = ('hidden_unit', 'weight', 'weight+hidden_unit')
UNIT_SCALE = rnn.UNIT_SCALE

_apply = jax.jit(rnn.rnn_apply, static_argnames=('cell', 'last_only'))


def _bernoulli(key, keep, shape):
  return jax.random.bernoulli(key, keep, shape).astype(jnp.float32)


def _random_model(cell, granularity, seed, *, hidden=HIDDEN, unit_keep=0.6, weight_keep=0.7, gate_more=False):
  """Trained-looking params (random biases and unit gains), 0/1 gates at ``granularity``, inputs ``[B, T, in]``.

  ``gate_more`` also gates the readout kernel and the bias per weight, so that units lose all fan-in or fan-out.
  """
  keys = jax.random.split(jax.random.key(seed), 9)
  unit_gates = 'hidden_unit' in granularity
  params = rnn.INIT[cell](keys[0], IN, hidden, OUT, unit_scale=unit_gates)
  params['bias'] = jax.random.normal(keys[1], params['bias'].shape)
  params['readout']['bias'] = jax.random.normal(keys[2], (OUT,))
  masks = jax.tree.map(lambda _: None, params)
  if unit_gates:
    params[UNIT_SCALE] = jax.random.uniform(keys[3], (hidden,), minval=0.5, maxval=1.5)
    masks[UNIT_SCALE] = _bernoulli(keys[4], unit_keep, (hidden,))
  if granularity != 'hidden_unit':
    masks['input_kernel'] = _bernoulli(keys[5], weight_keep, params['input_kernel'].shape)
    masks['recurrent_kernel'] = _bernoulli(keys[6], weight_keep, params['recurrent_kernel'].shape)
    if gate_more:
      masks['readout']['kernel'] = _bernoulli(keys[7], weight_keep, params['readout']['kernel'].shape)
      masks['bias'] = _bernoulli(keys[8], weight_keep, params['bias'].shape)
  inputs = jax.random.normal(jax.random.fold_in(keys[0], 1), (BATCH, TIME, IN))
  return params, masks, inputs


def _assert_same_outputs(compact, params, masks, inputs, cell, last_only_values=(False,)):
  """The export reproduces the masked model (``last_only=False`` covers every step; each value compiles anew)."""
  for last_only in last_only_values:
    expected = _apply(params, inputs, masks, cell=cell, last_only=last_only)
    actual = _apply(compact.params, inputs, cell=cell, last_only=last_only)
    assert actual.shape == expected.shape
    test_utils.assert_close(actual, expected, rtol=0, atol=TOL, err_msg=f'last_only={last_only}')


def _columns(units, num_gates, hidden=HIDDEN):
  """The gate columns of ``units``, gate block by gate block."""
  return (np.arange(num_gates)[:, None] * hidden + np.asarray(units)[None, :]).reshape(-1)


def _restrict(tree, kept, num_gates):
  """A params-layout tree (no unit_scale) restricted to the ``kept`` hidden units."""
  columns = _columns(kept, num_gates, tree['recurrent_kernel'].shape[0])
  return {'input_kernel': np.asarray(tree['input_kernel'])[:, columns],
          'recurrent_kernel': np.asarray(tree['recurrent_kernel'])[np.ix_(kept, columns)],
          'bias': np.asarray(tree['bias'])[columns],
          'readout': {'kernel': np.asarray(tree['readout']['kernel'])[kept],
                      'bias': np.asarray(tree['readout']['bias'])}}


def _full_pattern(params, masks):
  """The masked model's {0, 1} pattern per weight (per-weight gates times expanded unit gates), no unit_scale."""
  masks = dict(masks)
  unit_gate = masks.pop(UNIT_SCALE, None)
  params = {k: v for k, v in params.items() if k != UNIT_SCALE}
  if unit_gate is not None:
    unit_masks = rnn.unit_masks_from_gates(params, unit_gate)
    masks = masking.combine_masks(masks, unit_masks)
  return jax.tree.map(lambda p, m: np.ones(p.shape, np.float32) if m is None
                      else np.broadcast_to(np.asarray(m) != 0, p.shape).astype(np.float32),
                      params, masks, is_leaf=lambda x: x is None)


def _ones_where_none(patterns, params):
  return jax.tree.map(lambda p, m: np.ones(p.shape, np.float32) if m is None else m, params, patterns,
                      is_leaf=lambda x: x is None)


def _mse(params, inputs, targets, cell):
  return jnp.mean((rnn.rnn_apply(params, inputs, cell=cell) - targets) ** 2)


_mse_grad = jax.jit(jax.grad(_mse), static_argnames=('cell',))


@pytest.mark.parametrize('cell', CELLS)
@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_compact_matches_masked_model(cell, granularity):
  params, masks, inputs = _random_model(cell, granularity, seed=1)
  compact = compact_lib.compact_rnn(params, masks, cell=cell)
  _assert_same_outputs(compact, params, masks, inputs, cell, last_only_values=(True, False))
  assert UNIT_SCALE not in compact.params
  kept = compact.kept_units['hidden']
  hidden = kept.size
  num_gates = rnn.NUM_GATES[cell]
  assert compact.params['recurrent_kernel'].shape == (hidden, num_gates * hidden)
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(compact.params))
  if granularity != 'weight':
    assert 0 < hidden < HIDDEN
  if granularity == 'hidden_unit':  # Open biases keep every open unit live; open readouts give it fan-out.
    test_utils.assert_equal(kept, np.flatnonzero(masks[UNIT_SCALE]))
    assert all(m is None for m in jax.tree.leaves(compact.masks, is_leaf=lambda x: x is None))
  if granularity == 'weight':  # Nothing structural to remove; the per-weight patterns stay.
    test_utils.assert_equal(kept, np.arange(HIDDEN))
    test_utils.assert_equal(compact.masks['input_kernel'], masks['input_kernel'])
  if granularity == 'weight+hidden_unit':  # The kept units keep their per-weight pattern.
    columns = _columns(kept, num_gates)
    test_utils.assert_equal(compact.masks['input_kernel'], np.asarray(masks['input_kernel'])[:, columns])
    test_utils.assert_equal(compact.masks['recurrent_kernel'],
                            np.asarray(masks['recurrent_kernel'])[np.ix_(kept, columns)])
    assert compact.masks['bias'] is None and compact.masks['readout']['kernel'] is None


@pytest.mark.parametrize('cell', CELLS)
def test_removes_dead_and_fanout_free_units(cell):
  """One unit per case; only units 2, 10 and 11 can affect an output."""
  hidden, num_gates = 12, rnn.NUM_GATES[cell]
  params, _, inputs = _random_model(cell, 'hidden_unit', seed=2, hidden=hidden)
  every, candidate = _columns([0], num_gates, hidden), compact_lib.CANDIDATE_BLOCK * hidden
  unit = np.ones(hidden, np.float32)
  m_in, m_rec = np.ones((IN, num_gates * hidden), np.float32), np.ones((hidden, num_gates * hidden), np.float32)
  m_bias, m_out = np.ones(num_gates * hidden, np.float32), np.ones((hidden, OUT), np.float32)
  unit[0] = 0  # Unit gate closed.
  for j in (1, 2):  # Every incoming weight and bias closed ...
    m_in[:, every + j] = m_rec[:, every + j] = m_bias[every + j] = 0
  m_bias[candidate + 2] = 1  # ... but unit 2's candidate bias is open: live, kept.
  for j in (3, 8, 9):  # Candidate pre-activation closed (other gates open): the state stays 0.
    m_in[:, candidate + j] = m_rec[:, candidate + j] = m_bias[candidate + j] = 0
  m_rec[8, candidate + 9] = m_rec[9, candidate + 8] = 1  # 8 and 9 only feed each other.
  m_out[4:8] = m_rec[4:8] = 0  # Units 4-7 without readout ...
  m_rec[5, every + 4] = 1  # ... 5 feeds only 4 (no fan-out once 4 goes) ...
  m_rec[6, every + 7] = m_rec[7, every + 6] = 1  # ... 6 and 7 only feed each other.
  masks = {'input_kernel': m_in, 'recurrent_kernel': m_rec, 'bias': m_bias,
           'readout': {'kernel': m_out, 'bias': None}, UNIT_SCALE: unit}
  compact = compact_lib.compact_rnn(params, masks, cell=cell)
  test_utils.assert_equal(compact.kept_units['hidden'], [2, 10, 11])
  assert compact.params['input_kernel'].shape == (IN, num_gates * 3)
  _assert_same_outputs(compact, params, masks, inputs, cell)
  assert compact.masks['bias'] is not None and compact.masks['recurrent_kernel'] is not None


@pytest.mark.parametrize('cell', CELLS)
@pytest.mark.parametrize('fold_unit_scale', (True, False))
def test_all_units_closed(cell, fold_unit_scale):
  params, masks, inputs = _random_model(cell, 'weight+hidden_unit', seed=3)
  masks[UNIT_SCALE] = jnp.zeros(HIDDEN)
  compact = compact_lib.compact_rnn(params, masks, cell=cell, fold_unit_scale=fold_unit_scale)
  assert compact.kept_units['hidden'].size == 0
  assert compact.params['input_kernel'].shape == (IN, 0)
  assert compact.params['recurrent_kernel'].shape == (0, 0)
  assert compact.params['readout']['kernel'].shape == (0, OUT)
  assert UNIT_SCALE not in compact.params  # rnn.num_gates_of cannot expand a [0] unit_scale.
  _assert_same_outputs(compact, params, masks, inputs, cell)
  test_utils.assert_close(_apply(compact.params, inputs, cell=cell, last_only=True),
                          jnp.broadcast_to(params['readout']['bias'], (BATCH, OUT)))


@pytest.mark.parametrize('cell', CELLS)
def test_idempotent(cell):
  params, masks, _ = _random_model(cell, 'weight+hidden_unit', seed=4, gate_more=True)
  compact = compact_lib.compact_rnn(params, masks, cell=cell)
  ones = jax.tree.map(np.ones_like, compact.params)
  for again_masks, expected_masks in ((ones, jax.tree.map(lambda _: None, compact.params)),
                                      (compact.masks, compact.masks)):
    again = compact_lib.compact_rnn(compact.params, again_masks, cell=cell)
    test_utils.assert_trees_all_equal(again.params, compact.params)
    assert (jax.tree.structure(again.masks, is_leaf=lambda x: x is None)
            == jax.tree.structure(expected_masks, is_leaf=lambda x: x is None))
    test_utils.assert_trees_all_equal(again.masks, expected_masks)
    test_utils.assert_equal(again.kept_units['hidden'], np.arange(compact.kept_units['hidden'].size))


def test_removed_units_cannot_matter_property():
  """Over seeds: outputs match, and rewriting every weight of every removed unit leaves the masked model unchanged."""
  removed_total = 0
  for seed in range(6):
    rng = np.random.default_rng(seed)
    cell, granularity = CELLS[seed % 2], GRANULARITIES[(seed // 2) % 3]
    params, masks, inputs = _random_model(cell, granularity, seed=100 + seed, unit_keep=rng.uniform(0.2, 0.9),
                                          weight_keep=rng.choice([0.05, 0.15, 0.5]), gate_more=True)
    compact = compact_lib.compact_rnn(params, masks, cell=cell)
    _assert_same_outputs(compact, params, masks, inputs, cell)
    num_gates = rnn.NUM_GATES[cell]
    removed = np.setdiff1d(np.arange(HIDDEN), compact.kept_units['hidden'])
    removed_total += removed.size
    columns = _columns(removed, num_gates)
    noisy = jax.tree.map(np.array, params)
    noisy['input_kernel'][:, columns] = rng.normal(size=(IN, columns.size))
    noisy['recurrent_kernel'][:, columns] = rng.normal(size=(HIDDEN, columns.size))
    noisy['recurrent_kernel'][removed] = rng.normal(size=(removed.size, num_gates * HIDDEN))
    noisy['bias'][columns] = rng.normal(size=columns.size)
    noisy['readout']['kernel'][removed] = rng.normal(size=(removed.size, OUT))
    test_utils.assert_close(_apply(noisy, inputs, masks, cell=cell), _apply(params, inputs, masks, cell=cell),
                            rtol=0, atol=1e-6)
    again = compact_lib.compact_rnn(compact.params, compact.masks, cell=cell)
    test_utils.assert_equal(again.kept_units['hidden'], np.arange(compact.kept_units['hidden'].size))
  assert removed_total > 6  # The draws do remove units.


@pytest.mark.parametrize('cell', CELLS)
def test_gradients_match_masked_model_on_kept_units(cell):
  params, masks, inputs = _random_model(cell, 'weight+hidden_unit', seed=5, weight_keep=0.5, gate_more=True)
  targets = jax.random.normal(jax.random.key(6), (BATCH, TIME, OUT))
  compact = compact_lib.compact_rnn(params, masks, cell=cell)
  kept, num_gates = compact.kept_units['hidden'], rnn.NUM_GATES[cell]
  assert 0 < kept.size < HIDDEN
  effective = {k: v for k, v in rnn.effective_params(params, masks).items() if k != UNIT_SCALE}
  masked_grads = jax.tree.map(np.multiply, _mse_grad(effective, inputs, targets, cell=cell),
                              _full_pattern(params, masks))
  compact_grads = _mse_grad(compact.params, inputs, targets, cell=cell)
  compact_grads = jax.tree.map(np.multiply, compact_grads, _ones_where_none(compact.masks, compact.params))
  test_utils.assert_trees_all_close(compact_grads, _restrict(masked_grads, kept, num_gates), rtol=0, atol=TOL)


@pytest.mark.parametrize('cell, granularity', (('lstm', 'weight+hidden_unit'), ('gru', 'weight')))
def test_adaptation_matches_masked_inner_loop(cell, granularity):
  """Masked SGD in weight space (step ``inner_lr * m**2``, as ``meta.adapt``) = SGD on the export under its pattern.

  Unit 0 keeps only its (open, zero-valued) bias: removing it because its weights are 0 would break this.
  """
  params, masks, inputs = _random_model(cell, granularity, seed=7, weight_keep=0.5, gate_more=True)
  columns = list(_columns([0], rnn.NUM_GATES[cell]))
  masks['input_kernel'] = masks['input_kernel'].at[:, columns].set(0)
  masks['recurrent_kernel'] = masks['recurrent_kernel'].at[:, columns].set(0)
  masks['bias'] = masks['bias'].at[jnp.array(columns)].set(1)
  params['bias'] = params['bias'].at[jnp.array(columns)].set(0)
  if UNIT_SCALE in masks:
    masks[UNIT_SCALE] = masks[UNIT_SCALE].at[0].set(1)
  keys = jax.random.split(jax.random.key(8), 2)
  targets = jax.random.normal(keys[0], (BATCH, TIME, OUT))
  query = jax.random.normal(keys[1], (BATCH, TIME, IN))
  compact = compact_lib.compact_rnn(params, masks, cell=cell, fold_unit_scale=False)
  assert 0 in compact.kept_units['hidden']
  inner_lr = 0.3
  masked_lr = jax.tree.map(lambda p, m: inner_lr if m is None else inner_lr * m * m, params, masks,
                           is_leaf=lambda x: x is None)
  compact_lr = jax.tree.map(lambda m: inner_lr * m, _ones_where_none(compact.masks, compact.params))
  masked, exported = masking.apply_masks(params, masks), compact.params
  for _ in range(3):
    masked = jax.tree.map(lambda p, g, r: p - r * g, masked, _mse_grad(masked, inputs, targets, cell=cell), masked_lr)
    exported = jax.tree.map(lambda p, g, r: p - r * g, exported, _mse_grad(exported, inputs, targets, cell=cell),
                            compact_lr)
  assert jnp.abs(masked['bias'][jnp.array(columns)]).max() > 0  # Unit 0 did move.
  test_utils.assert_close(_apply(exported, query, cell=cell), _apply(masked, query, cell=cell), rtol=0, atol=TOL)


def test_bad_input():
  params = rnn.init_gru(jax.random.key(0), IN, HIDDEN, OUT)
  with pytest.raises(ValueError, match='valid cells'):
    compact_lib.compact_rnn(params, None, cell='rnn')
  with pytest.raises(ValueError, match="cell='lstm'"):
    compact_lib.compact_rnn(params, None, cell='lstm')
  with pytest.raises(ValueError, match='extra'):
    compact_lib.compact_rnn({**params, 'extra': np.zeros(1)}, None, cell='gru')
