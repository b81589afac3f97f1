"""The outer optimiser: Adam with one learning rate per meta-parameter group.

Meta-parameters are a dict of groups (``'params'``, ``'gate_logits'``,
``'meta_pruner'``, ``'inner_lrs'``); ``outer_optimizer`` shares Adam's moment
estimates code across groups and partitions only the final scaling with
``optax.partition``. ``meta.step.make_meta_step`` accepts any
``optax.GradientTransformation`` over that dict.
"""

from collections.abc import Mapping

import jax
import optax


def group_labels(meta_params: dict) -> dict:
  """Every leaf of ``meta_params[name]`` labelled ``name`` (the partition's labels)."""
  return {name: jax.tree.map(lambda _, n=name: n, tree) for name, tree in meta_params.items()}


def outer_optimizer(learning_rates: Mapping[str, float | optax.Schedule], *,
                    grad_clip_norm: float | None = None) -> optax.GradientTransformation:
  """Adam whose step size is ``learning_rates[group]`` for every leaf of that group.

  Args:
    learning_rates: a float or an ``optax`` schedule of the update count per
      top-level group of the meta-parameters; every group present must be named.
    grad_clip_norm: clip the global gradient norm to this first (None or 0: no clipping).
  """
  transforms = {name: optax.scale_by_learning_rate(lr) for name, lr in learning_rates.items()}

  def labels(meta_params):
    missing = sorted(set(meta_params) - set(transforms))
    if missing:
      raise ValueError(f'outer_optimizer has no learning rate for the meta-parameter groups {missing}; '
                       f'it has {sorted(transforms)}.')
    return group_labels(meta_params)

  chain = [optax.scale_by_adam(), optax.partition(transforms, labels)]
  if grad_clip_norm:
    chain.insert(0, optax.clip_by_global_norm(grad_clip_norm))
  return optax.chain(*chain)
