"""Task losses with a Flax ``apply`` bound in: ``(params, inputs, targets) -> scalar``.

The bound losses take the learners' optional ``reference=`` batch (the support
set, ``meta.learner``) and ignore it: they are for nets that treat every input
on its own (no batch norm), so there is nothing to normalise over a batch.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def mse_loss(apply_fn: Callable[[dict, jax.Array], jax.Array]):
  """Mean squared error of ``apply_fn({'params': params}, inputs)`` against ``targets``."""
  def loss(params, inputs, targets, reference=None):
    del reference  # Per-input net (module docstring).
    return jnp.mean((apply_fn({'params': params}, inputs) - targets) ** 2)
  return loss


def softmax_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean cross-entropy of ``logits [..., classes]`` against integer labels ``[...]`` or distributions ``[..., classes]``.

  Distributions are what distillation gives the query set (``meta.distill``): the
  loss is then linear in the target, so a blend of labels and a teacher's
  probabilities is the blend of the two losses.
  """
  if targets.ndim == logits.ndim:
    return jnp.mean(optax.softmax_cross_entropy(logits, targets))
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))


def labels_of(targets: jax.Array, logits_ndim: int) -> jax.Array:
  """Integer labels of ``targets``: themselves, or the most probable class of a distribution."""
  return jnp.argmax(targets, -1) if targets.ndim == logits_ndim else targets


def cross_entropy_loss(apply_fn: Callable[[dict, jax.Array], jax.Array]):
  """Mean softmax cross-entropy for integer ``targets`` (``[batch]``) or distributions (``[batch, classes]``)."""
  def loss(params, inputs, targets, reference=None):
    del reference  # Per-input net (module docstring).
    return softmax_cross_entropy(apply_fn({'params': params}, inputs), targets)
  return loss
