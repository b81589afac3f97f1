"""Non-finite guards for the jitted meta-step: one flag per step, optional skip of the update.

``all_finite`` is a single fused reduction over the loss and every gradient leaf,
cheap next to the meta-step. ``keep_finite_update`` selects the previous
meta-parameters, optimiser state and multiplier (``jnp.where``) when the flag is
down, while the step counter and the PRNG key still advance, so a skipped step
draws fresh tasks on the next call and the run stays deterministic.
"""

import jax
import jax.numpy as jnp

NONFINITE_MODES = ('stop', 'skip')


def all_finite(loss: jax.Array, grads) -> jax.Array:
  """True (bool scalar) when ``loss`` and every leaf of ``grads`` are finite."""
  flags = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(grads)]
  return jnp.logical_and(jnp.isfinite(loss), jnp.all(jnp.stack(flags)) if flags else True)


def keep_finite_update(ok: jax.Array, new_state, old_state):
  """``new_state`` where ``ok``; else ``new_state`` with ``old_state``'s meta-params, optimiser state and multiplier.

  Args:
    ok: bool scalar from ``all_finite``.
    new_state, old_state: ``MetaState``s of the same structure (after and before the update).
  """
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  return new_state._replace(meta_params=keep(new_state.meta_params, old_state.meta_params),
                            opt_state=keep(new_state.opt_state, old_state.opt_state),
                            multiplier=jnp.where(ok, new_state.multiplier, old_state.multiplier))
