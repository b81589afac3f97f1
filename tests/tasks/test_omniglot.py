"""Tests for metaprune_jax.tasks.omniglot (synthetic tagged images, no data files)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.tasks import omniglot
from tests import test_utils

NUM_CLASSES, NUM_DRAWERS = 12, 8
STATICS = ('num_tasks', 'ways', 'shots', 'queries')


def _tagged_images():
  """``[12, 8, 2, 3, 1]`` images whose every pixel is ``100 * class + drawer``."""
  tags = 100 * np.arange(NUM_CLASSES)[:, None] + np.arange(NUM_DRAWERS)[None, :]
  return jnp.asarray(np.broadcast_to(tags[:, :, None, None, None], (NUM_CLASSES, NUM_DRAWERS, 2, 3, 1)),
                     dtype=jnp.float32)


def _ids(inputs):
  """``[tasks, n, 2, 3, 1]`` tagged inputs -> (class ids, drawer ids), each ``[tasks, n]``."""
  tags = np.asarray(inputs)[..., 0, 0, 0].astype(int)
  return tags // 100, tags % 100


WAYS, SHOTS, QUERIES, TASKS = 4, 3, 5, 64  # shots + queries = all 8 drawers: a tight fit.
_SAMPLE = jax.jit(omniglot.sample_episodes, static_argnames=STATICS)  # One compile for the module.


@pytest.fixture(scope='module')
def batch():
  return _SAMPLE(jax.random.key(0), _tagged_images(), num_tasks=TASKS, ways=WAYS, shots=SHOTS, queries=QUERIES)


def test_sample_episodes_shapes_and_dtypes(batch):
  assert batch.support_inputs.shape == (TASKS, WAYS * SHOTS, 2, 3, 1)
  assert batch.query_inputs.shape == (TASKS, WAYS * QUERIES, 2, 3, 1)
  assert batch.support_targets.shape == (TASKS, WAYS * SHOTS) and batch.support_targets.dtype == jnp.int32
  assert batch.query_targets.shape == (TASKS, WAYS * QUERIES) and batch.query_targets.dtype == jnp.int32
  assert batch.support_inputs.dtype == jnp.float32


def test_sample_episodes_draws_ways_distinct_classes_with_shots_each(batch):
  support_classes, _ = _ids(batch.support_inputs)
  query_classes, _ = _ids(batch.query_inputs)
  for task in range(TASKS):
    values, counts = np.unique(support_classes[task], return_counts=True)
    assert len(values) == WAYS
    test_utils.assert_equal(counts, np.full(WAYS, SHOTS))
    assert set(query_classes[task]) == set(values)
    test_utils.assert_equal(np.unique(query_classes[task], return_counts=True)[1], np.full(WAYS, QUERIES))


def test_sample_episodes_support_and_query_images_are_disjoint(batch):
  s_cls, s_drw = _ids(batch.support_inputs)
  q_cls, q_drw = _ids(batch.query_inputs)
  for task in range(TASKS):
    support = set(zip(s_cls[task], s_drw[task]))
    query = set(zip(q_cls[task], q_drw[task]))
    assert len(support) == WAYS * SHOTS and len(query) == WAYS * QUERIES  # No repeats either.
    assert not support & query


def test_sample_episodes_labels_are_a_consistent_bijection_per_task(batch):
  s_cls, _ = _ids(batch.support_inputs)
  q_cls, _ = _ids(batch.query_inputs)
  s_lab, q_lab = np.asarray(batch.support_targets), np.asarray(batch.query_targets)
  for task in range(TASKS):
    label_of = {}
    for cls, lab in zip(np.concatenate([s_cls[task], q_cls[task]]), np.concatenate([s_lab[task], q_lab[task]])):
      assert label_of.setdefault(cls, lab) == lab, 'same class got two labels'
    assert sorted(label_of.values()) == list(range(WAYS)), 'labels are not a permutation of 0..ways-1'


def test_sample_episodes_labels_are_randomly_permuted(batch):
  s_cls, _ = _ids(batch.support_inputs)
  labels = np.asarray(batch.support_targets)
  # Label order along the (class-slot) support sequence varies between tasks ...
  assert len({tuple(row) for row in labels}) > 10
  # ... and the label does not follow the class id order.
  by_class_order = [tuple(labels[t][np.argsort(s_cls[t], kind='stable')]) for t in range(TASKS)]
  assert len(set(by_class_order)) > 10


def test_sample_episodes_covers_all_classes_and_drawers(batch):
  s_cls, s_drw = _ids(batch.support_inputs)
  q_cls, q_drw = _ids(batch.query_inputs)
  assert set(s_cls.ravel()) == set(range(NUM_CLASSES))
  assert set(np.concatenate([s_drw.ravel(), q_drw.ravel()])) == set(range(NUM_DRAWERS))
  # Each drawer lands in support sometimes and in query sometimes.
  assert set(s_drw.ravel()) == set(q_drw.ravel()) == set(range(NUM_DRAWERS))


def test_sample_episodes_jit_matches_eager_is_key_deterministic_and_does_not_retrace(batch):
  counter = test_utils.CompileCounter()
  sample = jax.jit(counter.wrap(omniglot.sample_episodes), static_argnames=STATICS)
  images = _tagged_images()
  kwargs = dict(num_tasks=TASKS, ways=WAYS, shots=SHOTS, queries=QUERIES)
  eager = omniglot.sample_episodes(jax.random.key(0), images, **kwargs)
  test_utils.assert_trees_all_equal(eager, batch)
  test_utils.assert_trees_all_equal(sample(jax.random.key(0), images, **kwargs), batch)
  other = sample(jax.random.key(1), images, **kwargs)
  assert not np.array_equal(other.support_inputs, batch.support_inputs)
  assert counter.count == 1


@pytest.mark.parametrize('kwargs, name', [
    (dict(ways=13, shots=1, queries=1), 'ways'),
    (dict(ways=5, shots=5, queries=4), 'shots'),
    (dict(ways=5, shots=5, queries=4), 'queries'),
    (dict(ways=5, shots=0, queries=1), 'shots'),
])
def test_sample_episodes_rejects_bad_sizes_naming_the_argument(kwargs, name):
  with pytest.raises(ValueError, match=name):
    omniglot.sample_episodes(jax.random.key(0), _tagged_images(), num_tasks=2, **kwargs)
