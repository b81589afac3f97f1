"""Reptile (Nichol et al. 2018) with gates, as a surrogate loss for the shared meta-step.

Per task: adapt on the support set (first-order: nothing differentiates
through the inner loop), then return

    query_loss(effective(sg(adapted)))  +  0.5 ||theta - sg(adapted)||^2 - sg(0.5 ||theta - adapted||^2)

The second part is 0 in value and has gradient ``theta - adapted`` w.r.t. the
adapted meta-parameters (the Reptile direction; averaged over the batch by the
meta-step). The first part is the query loss after adaptation, so the loss
reported is the usual one; with the weights held at ``sg(adapted)`` its only
gradient is into the gate logits (the gates stay differentiable), which is how
Reptile learns a mask. With ``adapt_gates`` the gate logits are adapted too and
get the Reptile direction instead.

Nothing else reaches the weights' gradient (the meta-pruner sees the weights
through ``stop_gradient``; the L0 term depends on the gates only), so the
meta-step's gradient w.r.t. the weights is exactly ``theta - mean_i phi_i``
(in the L0 ``'budget'`` mode it is scaled by the multiplier). The outer update
(``UPDATES``) is then either

* ``'adam'``: the outer optimiser's Adam on that direction, or
* ``'interpolate'`` (the paper's): ``theta <- theta + eps_t (mean_i phi_i - theta)``,
  plain SGD at step size ``eps_t`` (``interpolation_step_size``, annealed
  linearly; Nichol et al. anneal 1 -> 0), ``meta.optimizer.outer_optimizer``'s
  ``sgd_groups=('params',)``. The gate logits keep Adam.

References:
  Nichol, Achiam, Schulman. On First-Order Meta-Learning Algorithms. arXiv:1803.02999, 2018.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from metaprune_jax.meta import adapt
from metaprune_jax.meta import learner as learner_lib
from metaprune_jax.meta import maml
from metaprune_jax.meta.settings import Execution


UPDATES = ('adam', 'interpolate')  # The outer update of the weights (module docstring).


def interpolation_step_size(initial: float, final: float, num_outer_steps: int) -> optax.Schedule:
  """The step size ``eps_t = initial + (final - initial) * t / num_outer_steps`` of update ``t`` (0-based).

  ``t >= num_outer_steps`` gives ``final``; the last update of a run (``t = num_outer_steps - 1``) is one step
  short of it, as in the paper's ``eps_0 (1 - t / T)``.
  """
  return optax.linear_schedule(float(initial), float(final), int(num_outer_steps))


def pull(theta, adapted) -> jax.Array:
  """Zero-valued scalar whose gradient w.r.t. ``theta`` is ``theta - adapted`` (``adapted`` constant)."""
  adapted = jax.lax.stop_gradient(adapted)
  half_sq = sum(0.5 * jnp.sum(jnp.square(t - a)) for t, a in zip(jax.tree.leaves(theta), jax.tree.leaves(adapted)))
  return half_sq - jax.lax.stop_gradient(half_sq)


def reptile(loss_fn: adapt.LossFn, accuracy_fn: Callable | None = None, *,
            execution: Execution = Execution(), inductive: bool = False) -> learner_lib.Learner:
  adaptive = maml.adaptive_learner('reptile', loss_fn, accuracy_fn, execution=execution, first_order=True,
                                   inductive=inductive)

  def task_loss(meta_params, task, noise, *, settings, gate_mode='sample', fixed_masks=None):
    settings = settings._replace(first_order=True)
    adapted, effective = adapt.adapt_task(meta_params, task, noise, loss_fn, settings, execution, gate_mode, None,
                                          fixed_masks, weight_space=False)
    adapted = jax.lax.stop_gradient(adapted)
    gates_adapted = settings.adapt_gates and meta_params.get('gate_logits') is not None and gate_mode != 'off'
    theta = (meta_params['params'], meta_params['gate_logits']) if gates_adapted else meta_params['params']
    query_loss = loss_fn(effective(adapted), task.query_inputs, task.query_targets,
                         **learner_lib.query_reference(task, inductive))
    return query_loss + pull(theta, adapted)

  return adaptive._replace(task_loss=task_loss, batch_loss=learner_lib.batch_mean(task_loss, execution))
