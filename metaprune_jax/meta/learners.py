"""The learner registry: one name per algorithm, one contract (``meta.learner.Learner``).

Algorithms (``LEARNERS``):

* ``maml``: second-order MAML (``settings.first_order`` still switches it).
* ``fomaml``: MAML with ``first_order=True``.
* ``anil``: the inner loop adapts only ``head_keys`` (Raghu et al. 2020).
* ``metasgd``: per-parameter inner learning rates (``meta_sgd.py``).
* ``reptile``: outer direction ``theta - adapted`` (``reptile.py``).
* ``protonet``: no inner loop, prototypes of embeddings (``protonet.py``).

Every learner takes the gate modes of ``settings.GATE_MODES`` (per-task gate
noise in ``'sample'``) and fixed masks, and is transductive or, ``inductive=True``,
normalises its query set with the support set's batch statistics (``learner``).
"""

import functools
from collections.abc import Callable

from metaprune_jax.meta import adapt
from metaprune_jax.meta import maml
from metaprune_jax.meta import meta_sgd
from metaprune_jax.meta import protonet
from metaprune_jax.meta import reptile
from metaprune_jax.meta.learner import Learner
from metaprune_jax.meta.settings import Execution

LEARNERS = ('maml', 'fomaml', 'anil', 'metasgd', 'reptile', 'protonet')


@functools.lru_cache(maxsize=64)
def get_learner(name: str, *, loss_fn: adapt.LossFn, accuracy_fn: Callable | None = None,
                embed_fn: Callable | None = None, head_keys: tuple[str, ...] = (),
                execution: Execution = Execution(), inductive: bool = False) -> Learner:
  """Builds the learner called ``name`` (cached: the same inputs give the same object, so jit caches hit).

  Args:
    name: one of ``LEARNERS``.
    loss_fn: ``(params, inputs, targets) -> scalar``.
    accuracy_fn: ``(params, inputs, labels) -> scalar`` for classification, or None.
    embed_fn: ``(params, inputs) -> [n, features]`` (ProtoNets).
    head_keys: top-level parameter names of the head (ANIL).
    execution: how the inner loop and the task batch run.
    inductive: on the query set, call ``loss_fn`` / ``accuracy_fn`` / ``embed_fn`` with
      ``reference=task.support_inputs`` (they must take it): batch statistics of the support set.

  Raises:
    ValueError: for an unknown name (the message lists the valid ones), ANIL
      without ``head_keys`` or ProtoNets without ``embed_fn``.
  """
  if name == 'maml':
    return maml.maml(loss_fn, accuracy_fn, execution=execution, inductive=inductive)
  if name == 'fomaml':
    return maml.fomaml(loss_fn, accuracy_fn, execution=execution, inductive=inductive)
  if name == 'anil':
    return maml.anil(loss_fn, accuracy_fn, head_keys=tuple(head_keys), execution=execution, inductive=inductive)
  if name == 'metasgd':
    return meta_sgd.meta_sgd(loss_fn, accuracy_fn, execution=execution, inductive=inductive)
  if name == 'reptile':
    return reptile.reptile(loss_fn, accuracy_fn, execution=execution, inductive=inductive)
  if name == 'protonet':
    if embed_fn is None:
      raise ValueError("algorithm 'protonet' needs an embedding, but this problem has no embed_fn "
                       '(use a classification task such as --task=omniglot).')
    return protonet.protonet(embed_fn, execution=execution, inductive=inductive)
  raise ValueError(f'algorithm={name!r} is unknown; valid algorithms: {", ".join(LEARNERS)}.')
