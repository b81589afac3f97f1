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


# Within-group episodes: 12 classes in groups of 6, 3, 2 and 1 classes, interleaved (ids not contiguous).
GROUP_OF_CLASS = np.array([2, 0, 1, 0, 2, 0, 3, 1, 0, 1, 0, 0], np.int32)
GROUP_WAYS, GROUP_TASKS = 3, 400  # Groups 0 and 1 hold >= 3 classes; groups 2 and 3 are too small.
_SAMPLE_WITHIN_GROUP = jax.jit(omniglot.sample_within_group_episodes, static_argnames=STATICS)


@pytest.fixture(scope='module')
def group_batch():
  return _SAMPLE_WITHIN_GROUP(jax.random.key(0), _tagged_images(), GROUP_OF_CLASS, num_tasks=GROUP_TASKS,
                              ways=GROUP_WAYS, shots=SHOTS, queries=QUERIES)


def test_within_group_episodes_have_the_layout_of_mixed_episodes(group_batch):
  assert group_batch.support_inputs.shape == (GROUP_TASKS, GROUP_WAYS * SHOTS, 2, 3, 1)
  assert group_batch.query_inputs.shape == (GROUP_TASKS, GROUP_WAYS * QUERIES, 2, 3, 1)
  assert group_batch.support_targets.dtype == group_batch.query_targets.dtype == jnp.int32
  s_cls, _ = _ids(group_batch.support_inputs)
  q_cls, _ = _ids(group_batch.query_inputs)
  s_lab, q_lab = np.asarray(group_batch.support_targets), np.asarray(group_batch.query_targets)
  for task in range(GROUP_TASKS):
    label_of = {}
    for cls, lab in zip(np.concatenate([s_cls[task], q_cls[task]]), np.concatenate([s_lab[task], q_lab[task]])):
      assert label_of.setdefault(cls, lab) == lab, 'same class got two labels'
    assert sorted(label_of.values()) == list(range(GROUP_WAYS))
    test_utils.assert_equal(np.unique(s_cls[task], return_counts=True)[1], np.full(GROUP_WAYS, SHOTS))


def test_within_group_episodes_draw_distinct_classes_of_one_group(group_batch):
  s_cls, _ = _ids(group_batch.support_inputs)
  q_cls, _ = _ids(group_batch.query_inputs)
  for task in range(GROUP_TASKS):
    assert len(set(s_cls[task])) == GROUP_WAYS and set(q_cls[task]) == set(s_cls[task])
    assert len(set(GROUP_OF_CLASS[s_cls[task]])) == 1, f'task {task} mixes groups'


def test_within_group_episodes_draw_each_eligible_group_equally_and_never_a_small_one(group_batch):
  s_cls, _ = _ids(group_batch.support_inputs)
  groups = GROUP_OF_CLASS[s_cls[:, 0]]
  assert set(groups) == {0, 1}  # Groups 2 (2 classes) and 3 (1 class) cannot hold 3 ways.
  # Uniform over eligible groups: 1/2 each (weighting by size would give group 0 two thirds); 4 sigma = 0.1.
  assert abs(np.mean(groups == 0) - 0.5) < 0.1
  eligible_classes = set(np.flatnonzero(np.isin(GROUP_OF_CLASS, [0, 1])))
  assert set(s_cls.ravel()) == eligible_classes  # Every class of an eligible group is drawn at some point.


def test_within_group_episodes_support_and_query_drawers_are_distinct(group_batch):
  s_cls, s_drw = _ids(group_batch.support_inputs)
  q_cls, q_drw = _ids(group_batch.query_inputs)
  for task in range(GROUP_TASKS):
    support, query = set(zip(s_cls[task], s_drw[task])), set(zip(q_cls[task], q_drw[task]))
    assert len(support) == GROUP_WAYS * SHOTS and len(query) == GROUP_WAYS * QUERIES
    assert not support & query


def test_within_group_episodes_jit_matches_eager_and_does_not_retrace_across_keys(group_batch):
  counter = test_utils.CompileCounter()
  sample = jax.jit(counter.wrap(omniglot.sample_within_group_episodes), static_argnames=STATICS)
  images, groups = _tagged_images(), jnp.asarray(GROUP_OF_CLASS)
  kwargs = dict(num_tasks=GROUP_TASKS, ways=GROUP_WAYS, shots=SHOTS, queries=QUERIES)
  test_utils.assert_trees_all_equal(omniglot.sample_within_group_episodes(jax.random.key(0), images, groups,
                                                                          **kwargs), group_batch)
  test_utils.assert_trees_all_equal(sample(jax.random.key(0), images, groups, **kwargs), group_batch)
  other = sample(jax.random.key(1), images, groups, **kwargs)
  assert not np.array_equal(other.support_inputs, group_batch.support_inputs)
  assert counter.count == 1


def test_group_ids_number_names_in_sorted_order():
  test_utils.assert_equal(omniglot.group_ids(['Latin', 'Greek', 'Latin', 'Korean']), [2, 0, 2, 1])
  assert omniglot.group_ids(['Latin']).dtype == np.int32


@pytest.mark.parametrize('groups, ways, match', [
    (GROUP_OF_CLASS, 7, 'ways=7 exceeds the 6 classes of the largest group'),
    (GROUP_OF_CLASS[:-1], 3, r'group_of_class must be \[classes\] = \[12\]'),
    (GROUP_OF_CLASS + 11, 3, r'group ids must be in \[0, classes\)'),
    (GROUP_OF_CLASS.astype(np.float32), 3, 'integer group ids'),
])
def test_within_group_episodes_reject_bad_groups(groups, ways, match):
  with pytest.raises(ValueError, match=match):
    omniglot.sample_within_group_episodes(jax.random.key(0), _tagged_images(), groups, num_tasks=2, ways=ways,
                                          shots=1, queries=1)
