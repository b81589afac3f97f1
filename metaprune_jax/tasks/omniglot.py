"""N-way K-shot episodes drawn on device from an Omniglot image array.

``images`` is ``[classes, drawers, H, W, C]`` (e.g. ``OmniglotDataset.images``
of one split from ``metaprune_jax.data.omniglot_splits``; ``jax.device_put`` it once).
:func:`sample_episodes` is a pure function of a key, usable inside ``jax.jit``
with ``num_tasks``, ``ways``, ``shots`` and ``queries`` static::

  sample = jax.jit(sample_episodes, static_argnames=('num_tasks', 'ways', 'shots', 'queries'))
  batch = sample(key, images, num_tasks=32, ways=5, shots=1, queries=15)

:func:`sample_episodes` draws the classes of an episode from the whole pool
(mixed alphabets). :func:`sample_within_group_episodes` draws all the classes
of an episode from one group, e.g. one alphabet (Lake et al. 2015's one-shot
protocol); ``group_ids`` turns ``OmniglotDataset.alphabets`` into its
``group_of_class`` argument. Both return the same ``TaskBatch`` layout.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metaprune_jax.types import Array, PRNGKey, TaskBatch


def _check(images_shape, num_tasks, ways, shots, queries):
  if len(images_shape) < 3:
    raise ValueError(f'images must be [classes, drawers, H, W, C], got shape {images_shape}.')
  num_classes, num_drawers = images_shape[:2]
  for name, value in (('num_tasks', num_tasks), ('ways', ways), ('shots', shots), ('queries', queries)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f'{name} must be a positive int (a static argument under jit), got {value!r}.')
  if ways > num_classes:
    raise ValueError(
        f'ways={ways} exceeds the {num_classes} classes in images; lower ways or use a'
        ' split with more classes (e.g. add rotations).')
  if shots + queries > num_drawers:
    raise ValueError(
        f'shots + queries = {shots} + {queries} exceeds the {num_drawers} drawers per class;'
        ' lower shots or queries (they are drawn without replacement).')


def _episode(images: Array, classes: Array, drawer_key: PRNGKey, label_key: PRNGKey, *, shots: int,
             queries: int) -> TaskBatch:
  """The episode of ``classes`` (``[ways]`` distinct class ids): ``shots + queries`` distinct drawers each."""
  ways = classes.shape[0]
  num_drawers = images.shape[1]
  image_shape = images.shape[2:]
  drawers = jnp.argsort(jax.random.uniform(drawer_key, (ways, num_drawers)), axis=-1)[:, :shots + queries]
  labels = jnp.argsort(jax.random.uniform(label_key, (ways,))).astype(jnp.int32)  # Label of each class slot.
  chosen = images[classes[:, None], drawers]                      # [ways, shots + queries, H, W, C]
  return TaskBatch(
      support_inputs=chosen[:, :shots].reshape((ways * shots,) + image_shape),
      support_targets=jnp.repeat(labels, shots),
      query_inputs=chosen[:, shots:].reshape((ways * queries,) + image_shape),
      query_targets=jnp.repeat(labels, queries))


def _sample_task(key: PRNGKey, images: Array, *, ways: int, shots: int, queries: int) -> TaskBatch:
  """One task: ``ways`` distinct classes, ``shots + queries`` distinct drawers each."""
  num_classes = images.shape[0]
  class_key, drawer_key, label_key = jax.random.split(key, 3)
  # argsort of i.i.d. uniforms = a uniformly random permutation (ties have
  # probability ~0 and still give distinct indices); cheaper to compile than
  # jax.random.choice(replace=False) / permutation.
  classes = jnp.argsort(jax.random.uniform(class_key, (num_classes,)))[:ways]
  return _episode(images, classes, drawer_key, label_key, shots=shots, queries=queries)


def sample_episodes(
    key: PRNGKey, images: Array, *, num_tasks: int, ways: int, shots: int, queries: int,
) -> TaskBatch:
  """Samples ``num_tasks`` independent N-way episodes.

  Per task: ``ways`` distinct classes, and per class ``shots + queries``
  distinct drawers (without replacement), so no image is in both support and
  query. Class slots get labels ``0..ways-1`` in a random order per task.
  Inputs are grouped by class slot (all shots of one class, then the next).

  Args:
    key: PRNG key.
    images: ``[classes, drawers, H, W, C]``, any dtype (kept).
    num_tasks: tasks in the batch (static).
    ways: classes per task (static), ``<= classes``.
    shots: support images per class (static).
    queries: query images per class (static), ``shots + queries <= drawers``.

  Returns:
    ``TaskBatch`` with support_inputs ``[num_tasks, ways*shots, H, W, C]``,
    support_targets int32 ``[num_tasks, ways*shots]``, query_inputs
    ``[num_tasks, ways*queries, H, W, C]``, query_targets int32
    ``[num_tasks, ways*queries]``.
  """
  images = jnp.asarray(images)  # A host numpy array cannot be indexed by traced indices.
  _check(tuple(images.shape), num_tasks, ways, shots, queries)
  sample_one = functools.partial(_sample_task, ways=ways, shots=shots, queries=queries)
  return jax.vmap(sample_one, in_axes=(0, None))(jax.random.split(key, num_tasks), images)


def group_ids(group_names: Sequence[str]) -> np.ndarray:
  """Group names of the classes -> int32 group ids ``[classes]`` (ids ``0..groups-1``, in sorted name order).

  Args:
    group_names: ``[classes]``, e.g. ``OmniglotDataset.alphabets`` (a rotated
      copy of a character keeps its alphabet, so it joins that group).

  Returns:
    The ``group_of_class`` argument of :func:`sample_within_group_episodes`.
  """
  names = np.asarray(group_names)
  if names.ndim != 1:
    raise ValueError(f'group_names must be one name per class ([classes]), got shape {names.shape}.')
  return np.unique(names, return_inverse=True)[1].reshape(-1).astype(np.int32)


def _check_groups(group_of_class: Array, num_classes: int, ways: int) -> None:
  """Shape and dtype always; the id range and the largest group only for a concrete (not traced) array."""
  if tuple(group_of_class.shape) != (num_classes,):
    raise ValueError(f'group_of_class must be [classes] = [{num_classes}] (one group id per class of images), '
                     f'got shape {tuple(group_of_class.shape)}.')
  if not jnp.issubdtype(group_of_class.dtype, jnp.integer):
    raise ValueError(f'group_of_class must hold integer group ids, got dtype {group_of_class.dtype}.')
  if isinstance(group_of_class, jax.core.Tracer):
    return
  groups = np.asarray(group_of_class)
  if groups.min() < 0 or groups.max() >= num_classes:
    raise ValueError(f'group ids must be in [0, classes) = [0, {num_classes}), got ids from {groups.min()} to '
                     f'{groups.max()} (group_ids() makes such ids from names).')
  largest = int(np.bincount(groups).max())
  if ways > largest:
    raise ValueError(f'ways={ways} exceeds the {largest} classes of the largest group; lower ways (every class '
                     'of a within-group episode comes from one group).')


def _sample_within_group_task(key: PRNGKey, images: Array, group_of_class: Array, *, ways: int, shots: int,
                              queries: int) -> TaskBatch:
  """One task: a group with ``>= ways`` classes, ``ways`` distinct classes of it, distinct drawers each."""
  num_classes = images.shape[0]
  group_key, class_key, drawer_key, label_key = jax.random.split(key, 4)
  group_sizes = jnp.bincount(group_of_class, length=num_classes)    # [classes] indexed by group id.
  size_of_group_of_class = group_sizes[group_of_class]              # [classes], each >= 1.
  # One class drawn with probability proportional to 1 / (its group's size), among the classes of groups
  # with >= ways classes: its group is then uniform over those groups.
  logits = jnp.where(size_of_group_of_class >= ways, -jnp.log(size_of_group_of_class.astype(jnp.float32)),
                     -jnp.inf)
  group = group_of_class[jax.random.categorical(group_key, logits)]
  # The classes of the group with the top `ways` i.i.d. uniform scores (others score -1): `ways` distinct
  # classes, uniformly among the group's subsets.
  scores = jnp.where(group_of_class == group, jax.random.uniform(class_key, (num_classes,)), -1.0)
  classes = jax.lax.top_k(scores, ways)[1]
  return _episode(images, classes, drawer_key, label_key, shots=shots, queries=queries)


def sample_within_group_episodes(
    key: PRNGKey, images: Array, group_of_class: Array, *, num_tasks: int, ways: int, shots: int, queries: int,
) -> TaskBatch:
  """Samples ``num_tasks`` independent N-way episodes whose classes all come from one group (alphabet).

  Per task: a group drawn uniformly among the groups with at least ``ways``
  classes (each eligible alphabet equally often, whatever its size, so a
  class of a small alphabet is drawn more often than one of a large alphabet;
  weighting groups by their class count would instead draw every class equally
  often, as mixed episodes do; smaller groups are never drawn), then ``ways``
  distinct classes of that group uniformly, then per class ``shots + queries`` distinct drawers as in
  :func:`sample_episodes` (same layout and label convention). For Omniglot
  with ``group_of_class = group_ids(dataset.alphabets)`` the groups are
  alphabets, and a rotated copy of a character is a class of its alphabet
  (so an episode may hold a character and its rotation, as mixed episodes may).

  Args:
    key: PRNG key.
    images: ``[classes, drawers, H, W, C]``, any dtype (kept).
    group_of_class: int ``[classes]``, the group id of each class, in
      ``[0, classes)`` (``group_ids`` makes them). Checked on the host when
      concrete; under ``jit`` (traced) at least one group must have
      ``>= ways`` classes, which the caller checks.
    num_tasks: tasks in the batch (static).
    ways: classes per task (static), ``<=`` the largest group's classes.
    shots: support images per class (static).
    queries: query images per class (static), ``shots + queries <= drawers``.

  Returns:
    ``TaskBatch`` with support_inputs ``[num_tasks, ways*shots, H, W, C]``,
    support_targets int32 ``[num_tasks, ways*shots]``, query_inputs
    ``[num_tasks, ways*queries, H, W, C]``, query_targets int32
    ``[num_tasks, ways*queries]``.
  """
  images = jnp.asarray(images)
  _check(tuple(images.shape), num_tasks, ways, shots, queries)
  if not isinstance(group_of_class, jax.core.Tracer):
    group_of_class = np.asarray(group_of_class)  # Checked on the host, then moved once.
  _check_groups(group_of_class, images.shape[0], ways)
  group_of_class = jnp.asarray(group_of_class)
  sample_one = functools.partial(_sample_within_group_task, ways=ways, shots=shots, queries=queries)
  return jax.vmap(sample_one, in_axes=(0, None, None))(jax.random.split(key, num_tasks), images, group_of_class)
