"""How the outer objective trades task loss against the expected L0 norm.

Three forms, all over the expected density rho = E||m||_0 / N (the fraction of
gated weights expected to be nonzero, so every multiplier is scale-free):

* ``'penalty'``: minimise ``L + lambda * rho`` with a fixed ``lambda``.
* ``'target'``: reach a requested expected sparsity ``s*`` by dual ascent on the
  Lagrange multiplier of the equality ``rho = 1 - s*``: minimise
  ``L + mu * (rho - (1 - s*)) + quadratic * (rho - (1 - s*))**2`` over the
  network (the quadratic term, an augmented Lagrangian, pulls back at once while
  the multiplier catches up), and step ``mu <- mu + dual_lr * (rho - (1 - s*))``. ``mu`` may turn negative: sampled
  gates add noise, so the task loss alone tends to close gates, and an
  inequality form would then overshoot the target with ``mu`` stuck at 0.
* ``'budget'``: the constrained form ``min rho  s.t.  L <= epsilon``: minimise
  ``rho + mu * (L - epsilon)`` and step ``mu <- max(0, mu + dual_lr * (L - epsilon))``.

In ``'target'`` mode the requested sparsity can ramp up linearly over
``warmup_steps`` meta-steps (``s*(t) = s* min(1, t / warmup_steps)``): the
multiplier then tracks a slowly moving target instead of chasing a distant one,
which avoids driving gates far past the target (closed gates get no task-loss
gradient and reopen slowly).

The multiplier is part of the training state; the update is pure and runs inside
the jitted meta-step (the objective sees it through ``stop_gradient``).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

MODES = ('penalty', 'target', 'budget')


class L0Objective(NamedTuple):
  """Settings of the sparsity term.

  Attributes:
    mode: one of ``MODES``.
    penalty: ``lambda`` of the ``'penalty'`` mode.
    target_sparsity: requested expected sparsity in [0, 1) (``'target'`` mode).
    loss_budget: ``epsilon`` of the ``'budget'`` mode.
    dual_lr: step size of the multiplier's dual ascent.
    warmup_steps: meta-steps over which the target sparsity ramps up from 0.
    quadratic: weight of the augmented-Lagrangian term in ``'target'`` mode.
  """
  mode: str = 'target'
  penalty: float = 0.0
  target_sparsity: float = 0.9
  loss_budget: float = 0.5
  dual_lr: float = 1e-3
  warmup_steps: int = 0
  quadratic: float = 0.0


def validate(objective: L0Objective) -> None:
  """Raises ``ValueError`` naming the config field for bad settings."""
  if objective.mode not in MODES:
    raise ValueError(f'--config.sparsity_mode={objective.mode!r} is unknown; use one of {MODES}.')
  if not 0.0 <= objective.target_sparsity < 1.0:
    raise ValueError(f'--config.target_sparsity={objective.target_sparsity} is outside [0, 1); '
                     'pass a fraction of weights to prune, e.g. 0.9.')
  if objective.penalty < 0:
    raise ValueError(f'--config.sparsity_penalty={objective.penalty} must be >= 0.')
  if objective.quadratic < 0:
    raise ValueError(f'--config.sparsity_quadratic={objective.quadratic} must be >= 0.')
  if objective.dual_lr < 0:
    raise ValueError(f'--config.dual_lr={objective.dual_lr} must be >= 0.')
  if objective.warmup_steps < 0:
    raise ValueError(f'--config.sparsity_warmup_steps={objective.warmup_steps} must be >= 0.')
  if objective.mode == 'budget' and objective.loss_budget <= 0:
    raise ValueError(f'--config.loss_budget={objective.loss_budget} must be > 0.')


def target_sparsity_at(objective: L0Objective, step) -> jax.Array:
  """The requested sparsity at meta-step ``step`` (ramped over ``warmup_steps``)."""
  if objective.warmup_steps <= 0:
    return jnp.asarray(objective.target_sparsity, jnp.float32)
  ramp = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / objective.warmup_steps)
  return objective.target_sparsity * ramp


def outer_objective(task_loss: jax.Array, density: jax.Array, multiplier: jax.Array,
                    objective: L0Objective, step=None) -> jax.Array:
  """The scalar the outer optimiser minimises (gradients flow to ``task_loss`` and ``density``).

  ``step`` (the meta-step) matters only for a ramped target; None means the end of the ramp.
  """
  mu = jax.lax.stop_gradient(multiplier)
  if objective.mode == 'penalty':
    return task_loss + objective.penalty * density
  if objective.mode == 'target':
    target = objective.target_sparsity if step is None else target_sparsity_at(objective, step)
    violation = density - (1.0 - target)
    return task_loss + mu * violation + objective.quadratic * violation ** 2
  if objective.mode == 'budget':
    return density + mu * (task_loss - objective.loss_budget)
  raise ValueError(f'unknown sparsity mode {objective.mode!r}; use one of {MODES}.')


def update_multiplier(multiplier: jax.Array, task_loss: jax.Array, density: jax.Array,
                      objective: L0Objective, step=None) -> jax.Array:
  """One dual-ascent step on the multiplier (unchanged in ``'penalty'`` mode)."""
  task_loss = jax.lax.stop_gradient(task_loss)
  density = jax.lax.stop_gradient(density)
  if objective.mode == 'target':  # Equality constraint: mu is free.
    target = objective.target_sparsity if step is None else target_sparsity_at(objective, step)
    return multiplier + objective.dual_lr * (density - (1.0 - target))
  if objective.mode == 'budget':  # Inequality constraint: mu >= 0.
    return jnp.maximum(0.0, multiplier + objective.dual_lr * (task_loss - objective.loss_budget))
  return multiplier
