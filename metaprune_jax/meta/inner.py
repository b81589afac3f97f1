"""Inner-loop adaptation: a ``lax.scan`` of SGD steps on a task's support loss."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Fast = Any  # The adapted pytree (params, or (params, gate_logits)).


def _lr_tree(inner_lr, fast: Fast):
  """Broadcasts a scalar learning rate over ``fast``; a pytree passes through (Meta-SGD)."""
  if isinstance(inner_lr, (int, float)) or (hasattr(inner_lr, 'ndim') and inner_lr.ndim == 0
                                             and not isinstance(fast, jax.Array)):
    return jax.tree.map(lambda _: inner_lr, fast)
  return inner_lr


def sgd_step(inner_loss: Callable[[Fast], jax.Array], fast: Fast, inner_lr, *,
             first_order: bool = False) -> Fast:
  """One step ``fast - inner_lr * grad``; ``first_order`` stops the gradient's own gradient."""
  grads = jax.grad(inner_loss)(fast)
  if first_order:
    grads = jax.lax.stop_gradient(grads)
  return jax.tree.map(lambda p, g, lr: p - lr * g, fast, grads, _lr_tree(inner_lr, fast))


def adapt(inner_loss: Callable[[Fast], jax.Array], fast: Fast, *, inner_lr, num_inner_steps: int,
          first_order: bool = False, trace_fn: Callable[[Fast], Any] | None = None,
          unroll: int | bool = 1, python_loop: bool = False):
  """Runs ``num_inner_steps`` SGD steps on ``inner_loss`` with ``lax.scan``.

  Args:
    inner_loss: ``fast -> scalar`` support loss of one task.
    fast: the pytree being adapted.
    inner_lr: scalar, or a pytree with the structure of ``fast`` (per-parameter
      learning rates, as in Meta-SGD).
    num_inner_steps: number of SGD steps (static, >= 0).
    first_order: drop second-order terms (FOMAML): inner gradients are treated
      as constants when differentiating through the adaptation.
    trace_fn: optional ``fast -> value`` recorded before the first step and after
      every step (e.g. the query loss), giving ``[num_inner_steps + 1, ...]``.
    unroll: passed to ``lax.scan``.
    python_loop: unroll the steps in Python (straight-line code) instead of a
      ``lax.scan`` (``benchmarks/scan_overhead.py`` compares the two); compile
      time grows with the step count, so use it for short horizons.

  Returns:
    ``fast`` after adaptation, or ``(fast, trace)`` when ``trace_fn`` is given.
  """
  def body(carry, _):
    carry = sgd_step(inner_loss, carry, inner_lr, first_order=first_order)
    return carry, (None if trace_fn is None else trace_fn(carry))

  if python_loop:
    adapted, records = fast, []
    for _ in range(num_inner_steps):
      adapted, record = body(adapted, None)
      records.append(record)
    if trace_fn is None:
      return adapted
    first = trace_fn(fast)
    return adapted, jax.tree.map(lambda f, *r: jnp.stack([f, *r]), first, *records)
  adapted, trace = jax.lax.scan(body, fast, None, length=num_inner_steps, unroll=unroll)
  if trace_fn is None:
    return adapted
  first = trace_fn(fast)
  trace = jax.tree.map(lambda f, t: jnp.concatenate([f[None], t], axis=0), first, trace)
  return adapted, trace
