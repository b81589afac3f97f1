"""Task losses with a Flax ``apply`` bound in: ``(params, inputs, targets) -> scalar``."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def mse_loss(apply_fn: Callable[[dict, jax.Array], jax.Array]):
  """Mean squared error of ``apply_fn({'params': params}, inputs)`` against ``targets``."""
  def loss(params, inputs, targets):
    return jnp.mean((apply_fn({'params': params}, inputs) - targets) ** 2)
  return loss


def cross_entropy_loss(apply_fn: Callable[[dict, jax.Array], jax.Array]):
  """Mean softmax cross-entropy for integer ``targets`` (``[batch]``)."""
  def loss(params, inputs, targets):
    logits = apply_fn({'params': params}, inputs)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))
  return loss
