"""The outer optimiser: Adam with one learning rate per meta-parameter group.

Meta-parameters are a dict of groups (``'params'``, ``'gate_logits'``,
``'meta_pruner'``, ``'inner_lrs'``); ``outer_optimizer`` shares Adam's moment
estimates code across groups and partitions only the final scaling with
``optax.partition``. Groups named in ``sgd_groups`` skip Adam (and clipping)
and take plain SGD steps: Reptile's interpolation ``theta + eps_t (mean_i phi_i
- theta)`` is SGD at step size ``eps_t`` on its direction ``theta - mean_i phi_i``
(``meta.reptile``). ``meta.step.make_meta_step`` accepts any
``optax.GradientTransformation`` over that dict.
"""

from collections.abc import Collection
from collections.abc import Mapping

import jax
import optax


def group_labels(meta_params: dict) -> dict:
  """Every leaf of ``meta_params[name]`` labelled ``name`` (the partition's labels)."""
  return {name: jax.tree.map(lambda _, n=name: n, tree) for name, tree in meta_params.items()}


def except_groups(transform: optax.GradientTransformation,
                  excluded: Collection[str]) -> optax.GradientTransformation:
  """``transform`` on every group but ``excluded``, whose updates pass through unchanged (and keep no state)."""
  if not excluded:
    return transform
  return optax.masked(transform, lambda meta_params: {name: name not in excluded for name in meta_params})


def outer_optimizer(learning_rates: Mapping[str, float | optax.Schedule], *,
                    grad_clip_norm: float | None = None,
                    sgd_groups: Collection[str] = ()) -> optax.GradientTransformation:
  """Adam whose step size is ``learning_rates[group]`` for every leaf of that group.

  Args:
    learning_rates: a float or an ``optax`` schedule of the update count per
      top-level group of the meta-parameters; every group present must be named.
    grad_clip_norm: clip the global gradient norm to this first (None or 0: no
      clipping); the norm is over the Adam groups only.
    sgd_groups: groups updated by plain SGD, ``-learning_rates[group](count) *
      grad`` exactly: no Adam, no clipping (Reptile's interpolation). Empty: the
      optimiser (and its state) is the plain Adam one.
  """
  transforms = {name: optax.scale_by_learning_rate(lr) for name, lr in learning_rates.items()}
  unknown = sorted(set(sgd_groups) - set(transforms))
  if unknown:
    raise ValueError(f'outer_optimizer: sgd_groups {unknown} have no learning rate; it has {sorted(transforms)}.')

  def labels(meta_params):
    missing = sorted(set(meta_params) - set(transforms))
    if missing:
      raise ValueError(f'outer_optimizer has no learning rate for the meta-parameter groups {missing}; '
                       f'it has {sorted(transforms)}.')
    return group_labels(meta_params)

  chain = [except_groups(optax.scale_by_adam(), sgd_groups), optax.partition(transforms, labels)]
  if grad_clip_norm:
    chain.insert(0, except_groups(optax.clip_by_global_norm(grad_clip_norm), sgd_groups))
  return optax.chain(*chain)
