"""N-way K-shot episodes drawn on device from an Omniglot image array.

``images`` is ``[classes, drawers, H, W, C]`` (e.g. ``OmniglotDataset.images``
of one split from ``metaprune_jax.data.omniglot_splits``; ``jax.device_put`` it once).
:func:`sample_episodes` is a pure function of a key, usable inside ``jax.jit``
with ``num_tasks``, ``ways``, ``shots`` and ``queries`` static::

  sample = jax.jit(sample_episodes, static_argnames=('num_tasks', 'ways', 'shots', 'queries'))
  batch = sample(key, images, num_tasks=32, ways=5, shots=1, queries=15)
"""

import functools

import jax
import jax.numpy as jnp

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


def _sample_task(key: PRNGKey, images: Array, *, ways: int, shots: int, queries: int) -> TaskBatch:
  """One task: ``ways`` distinct classes, ``shots + queries`` distinct drawers each."""
  num_classes, num_drawers = images.shape[:2]
  image_shape = images.shape[2:]
  class_key, drawer_key, label_key = jax.random.split(key, 3)
  # argsort of i.i.d. uniforms = a uniformly random permutation (ties have
  # probability ~0 and still give distinct indices); cheaper to compile than
  # jax.random.choice(replace=False) / permutation.
  classes = jnp.argsort(jax.random.uniform(class_key, (num_classes,)))[:ways]
  drawers = jnp.argsort(jax.random.uniform(drawer_key, (ways, num_drawers)), axis=-1)[:, :shots + queries]
  labels = jnp.argsort(jax.random.uniform(label_key, (ways,))).astype(jnp.int32)  # Label of each class slot.
  chosen = images[classes[:, None], drawers]                      # [ways, shots + queries, H, W, C]
  return TaskBatch(
      support_inputs=chosen[:, :shots].reshape((ways * shots,) + image_shape),
      support_targets=jnp.repeat(labels, shots),
      query_inputs=chosen[:, shots:].reshape((ways * queries,) + image_shape),
      query_targets=jnp.repeat(labels, queries))


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
