"""Training-time image augmentation applied on device inside the jitted meta-step.

:func:`random_shifts` moves every image by its own integer offset of at most
``max_shift`` pixels in each direction, filling the uncovered border with the
background value (0: Omniglot strokes are 1 on 0). It is meant for meta-training
episodes only; evaluation episodes stay unshifted, so held-out accuracy is
measured on the data as published.
"""

import jax
import jax.numpy as jnp

from metaprune_jax.types import Array, PRNGKey, TaskBatch


def random_shifts(key: PRNGKey, images: Array, max_shift: int, *, fill=0) -> Array:
  """Translates each image by an independent offset in ``[-max_shift, max_shift]^2``.

  Args:
    key: PRNG key.
    images: ``[..., H, W, C]`` images, any dtype (kept).
    max_shift: largest offset in pixels (static); 0 returns ``images`` unchanged.
    fill: value of the pixels shifted in from outside.

  Returns:
    ``images.shape`` array: ``out[..., i, j, :] = images[..., i - dy, j - dx, :]``
    where that index is inside the image, ``fill`` elsewhere; ``(dy, dx)`` drawn
    uniformly per image.
  """
  if not isinstance(max_shift, int) or isinstance(max_shift, bool) or max_shift < 0:
    raise ValueError(f'max_shift must be a non-negative int, got {max_shift!r}.')
  if max_shift == 0:
    return images
  if images.ndim < 3:
    raise ValueError(f'images must be [..., H, W, C], got shape {images.shape}.')
  lead, (height, width, channels) = images.shape[:-3], images.shape[-3:]
  if 2 * max_shift >= min(height, width):
    raise ValueError(f'max_shift={max_shift} must be below half the image size {height}x{width}.')
  flat = images.reshape((-1, height, width, channels))
  pad = ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0))
  padded = jnp.pad(flat, pad, constant_values=jnp.asarray(fill, images.dtype))
  # Offset (dy, dx) reads the window starting at (max_shift - dy, max_shift - dx).
  starts = jax.random.randint(key, (flat.shape[0], 2), 0, 2 * max_shift + 1)

  def crop(image, start):
    return jax.lax.dynamic_slice(image, (start[0], start[1], 0), (height, width, channels))
  return jax.vmap(crop)(padded, starts).reshape(lead + (height, width, channels))


def shift_episodes(key: PRNGKey, tasks: TaskBatch, max_shift: int, *, fill=0) -> TaskBatch:
  """:func:`random_shifts` on the support and query images of ``tasks`` (independent offsets)."""
  if max_shift == 0:
    return tasks
  support_key, query_key = jax.random.split(key)
  return tasks._replace(support_inputs=random_shifts(support_key, tasks.support_inputs, max_shift, fill=fill),
                        query_inputs=random_shifts(query_key, tasks.query_inputs, max_shift, fill=fill))
