"""Meta-SGD (Li et al. 2017): per-parameter inner learning rates, meta-learned with the weights.

The learning rates are an extra meta-parameter group ``meta_params['inner_lrs']``
mirroring ``params`` (initialised to ``settings.inner_lr``); ``adapt.adapt_task``
uses them in place of the scalar ``inner_lr``. Their outer step size is the
``'inner_lrs'`` group of ``meta.optimizer.outer_optimizer``. The inner loop and
the outer loss are MAML's, so gates and fixed masks work unchanged.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from metaprune_jax.meta import adapt
from metaprune_jax.meta import learner as learner_lib
from metaprune_jax.meta import maml
from metaprune_jax.meta.settings import Execution
from metaprune_jax.meta.settings import InnerSettings


def init_inner_lrs(params, settings: InnerSettings) -> dict:
  """``{'inner_lrs': tree mirroring params, every entry settings.inner_lr}``."""
  return {'inner_lrs': jax.tree.map(lambda p: jnp.full_like(p, settings.inner_lr), params)}


def meta_sgd(loss_fn: adapt.LossFn, accuracy_fn: Callable | None = None, *,
             execution: Execution = Execution(), inductive: bool = False) -> learner_lib.Learner:
  return maml.adaptive_learner('metasgd', loss_fn, accuracy_fn, execution=execution, init_extra=init_inner_lrs,
                               inductive=inductive)
