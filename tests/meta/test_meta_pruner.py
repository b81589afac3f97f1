"""Tests for the meta-pruner's task embedding, task logits and mask distances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.masks import hard_concrete
from metaprune_jax.meta import meta_pruner
from metaprune_jax.nets import mlp
from tests import test_utils


def _setup(granularity='weight'):
  model = mlp.make_mlp((6, 5), 1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']
  base = hard_concrete.init_gate_logits(params, granularity, init_logit=1.0)
  pruner = meta_pruner.init_meta_pruner(jax.random.key(1), params, base, feature_dim=2, hidden_sizes=(8,),
                                        embed_dim=4)
  return params, base, pruner


def _perturbed(pruner, key):
  """Random nonzero modulation weights (an initial pruner has them at zero)."""
  leaves, treedef = jax.tree.flatten(pruner['layers'])
  keys = jax.random.split(key, len(leaves))
  leaves = [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
  return {**pruner, 'layers': jax.tree.unflatten(treedef, leaves)}


def test_task_embedding_is_permutation_invariant():
  _, _, pruner = _setup()
  features = jax.random.normal(jax.random.key(2), (7, 2))
  permuted = features[jax.random.permutation(jax.random.key(3), 7)]
  test_utils.assert_close(meta_pruner.task_embedding(pruner, permuted),
                          meta_pruner.task_embedding(pruner, features), rtol=1e-5, atol=1e-6)


def test_initial_pruner_gives_the_shared_logits_exactly():
  params, base, pruner = _setup()
  features = jax.random.normal(jax.random.key(2), (5, 2))
  test_utils.assert_trees_all_equal(meta_pruner.task_gate_logits(pruner, base, params, features), base)


@pytest.mark.parametrize('granularity', ['weight', 'out_unit', 'in_unit'])
def test_task_logits_mirror_the_gate_tree_and_depend_on_the_task(granularity):
  params, base, pruner = _setup(granularity)
  pruner = _perturbed(pruner, jax.random.key(4))
  a = meta_pruner.task_gate_logits(pruner, base, params, jax.random.normal(jax.random.key(5), (5, 2)))
  b = meta_pruner.task_gate_logits(pruner, base, params, jax.random.normal(jax.random.key(6), (5, 2)))
  assert jax.tree.structure(a, is_leaf=lambda x: x is None) == jax.tree.structure(base, is_leaf=lambda x: x is None)
  for la, lb, l0 in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(base)):
    assert la.shape == l0.shape
  assert max(float(jnp.max(jnp.abs(la - lb))) for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b))) > 1e-3


def test_gradients_reach_every_pruner_parameter():
  params, base, pruner = _setup()
  pruner = _perturbed(pruner, jax.random.key(4))
  features = jax.random.normal(jax.random.key(2), (5, 2))

  def loss(pruner):
    logits = meta_pruner.task_gate_logits(pruner, base, params, features)
    return hard_concrete.expected_density(params, logits) + sum(
        jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(logits))
  grads = jax.grad(loss)(pruner)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert float(jnp.max(jnp.abs(g))) > 0, f'no gradient at {jax.tree_util.keystr(path)}'


def test_unit_statistic_uses_the_norm_of_the_switched_weights():
  param = jnp.array([[3.0, 0.0], [4.0, 1.0]])  # Columns have norms 5 and 1.
  z = meta_pruner._standardised_log_magnitude(param, jnp.zeros((2,)))
  test_utils.assert_close(z, jnp.array([1.0, -1.0]), atol=1e-4)
  rows = meta_pruner._standardised_log_magnitude(param, jnp.zeros((2, 1)))  # Row norms 3 and sqrt(17).
  assert rows.shape == (2, 1) and float(rows[0, 0]) < float(rows[1, 0])


def test_mask_distances_match_hand_counts():
  a = {'k': jnp.array([1.0, 1.0, 0.0, 0.0])}
  b = {'k': jnp.array([1.0, 0.0, 1.0, 0.0])}
  same = meta_pruner.mask_distances([a, a])
  test_utils.assert_close(same['jaccard'], 0.0)
  test_utils.assert_close(same['hamming'], 0.0)
  d = meta_pruner.mask_distances([a, b])  # Kept {0,1} vs {0,2}: 1 shared of 3; 2 of 4 gates differ.
  test_utils.assert_close(d['jaccard'], 2.0 / 3.0, rtol=1e-6)
  test_utils.assert_close(d['hamming'], 0.5)
  three = meta_pruner.mask_distances([a, b, {'k': jnp.array([0.0, 0.0, 1.0, 1.0])}])
  expected_jaccard = np.mean([2 / 3, 1.0, 2 / 3])
  test_utils.assert_close(three['jaccard'], expected_jaccard, rtol=1e-6)
