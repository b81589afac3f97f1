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
def test_harden_reaches_at_least_the_target_and_keeps_the_highest_logits(granularity, target):
  params = trees.mlp_params()
  logits = jax.tree.map(lambda g: jax.random.normal(jax.random.key(g.size), g.shape),
                        hard_concrete.init_gate_logits(params, granularity))
  hard = harden.harden(params, logits, target)
  realised = float(sparsity.realised_sparsity(params, hard, HC))
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
