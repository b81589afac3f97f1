"""The meta-learner registry: one contract for MAML, FOMAML, ANIL, Meta-SGD, Reptile and ProtoNets.

A :class:`Learner` is a NamedTuple of pure functions, built by
:func:`get_learner` from a name and the problem's functions:

* ``task_loss(meta_params, task, noise, *, settings, gate_mode, fixed_masks)``:
  one task's outer loss (a scalar whose gradient w.r.t. ``meta_params`` is the
  algorithm's meta-gradient); ``noise`` is this task's gate noise (or None).
* ``batch_loss(meta_params, tasks, key, *, settings, gate_mode, fixed_masks)``:
  the mean over a task batch (``vmap``, in_axes 0 over tasks, each task with its
  own gate noise). ``meta.step.make_meta_step`` differentiates this.
* ``task_traces(meta_params, task, *, settings, gate_mode, fixed_masks)``:
  evaluation: ``{'loss': [num_inner_steps + 1]}`` (plus ``'accuracy'`` for
  classification) before and after every inner step.
* ``init_extra(params, settings)``: extra meta-parameter groups beside
  ``params`` and ``gate_logits`` (Meta-SGD: ``{'inner_lrs': ...}``), each with
  its own outer learning rate (``step.make_outer_optimizer``).

Every learner takes the gate modes of ``maml.GATE_MODES`` (per-task gate noise
in ``'sample'``) and fixed masks. Meta-parameters are a dict
``{'params', 'gate_logits' (or None), *extra}``.

Algorithms (``LEARNERS``):

* ``maml``: second-order MAML (``settings.first_order`` still switches it);
  the same computation as ``maml.batch_query_loss`` (both batch through
  ``maml.mean_over_tasks``).
* ``fomaml``: MAML with ``first_order=True``.
* ``anil``: the inner loop adapts only ``head_keys`` (Raghu et al. 2020); the
  body is shared, and the outer gradient still reaches it.
* ``metasgd``: per-parameter inner learning rates (``meta_sgd.py``).
* ``reptile``: outer direction ``theta - adapted`` (``reptile.py``).
* ``protonet``: no inner loop, prototypes of embeddings (``protonet.py``).
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax

from metaprune_jax import types
from metaprune_jax.meta import maml

LEARNERS = ('maml', 'fomaml', 'anil', 'metasgd', 'reptile', 'protonet')


class Learner(NamedTuple):
  """A meta-learning algorithm as pure functions (module docstring)."""
  name: str
  task_loss: Callable
  batch_loss: Callable
  task_traces: Callable
  init_extra: Callable


def no_extra(params, settings) -> dict:
  del params, settings
  return {}


def batch_mean(task_loss: Callable) -> Callable:
  """``batch_loss`` from ``task_loss``: ``maml.mean_over_tasks`` (gate noise per task or shared, vmap, chunks)."""
  def batch_loss(meta_params, tasks: types.TaskBatch, key: types.PRNGKey, *, settings: maml.InnerSettings,
                 gate_mode: str = 'sample', fixed_masks=None) -> jax.Array:
    def one_task(mp, task, noise):
      return task_loss(mp, task, noise, settings=settings, gate_mode=gate_mode, fixed_masks=fixed_masks)
    return maml.mean_over_tasks(one_task, meta_params, tasks, key, settings=settings, gate_mode=gate_mode)
  return batch_loss


def query_metrics(task: types.TaskBatch, loss_fn: maml.LossFn, accuracy_fn: Callable | None) -> Callable:
  """``effective_params -> {'loss': scalar[, 'accuracy': scalar]}`` on the task's query set."""
  def metrics(params):
    out = {'loss': loss_fn(params, task.query_inputs, task.query_targets)}
    if accuracy_fn is not None:
      out['accuracy'] = accuracy_fn(params, task.query_inputs, task.query_targets)
    return out
  return metrics


def check_eval_mode(gate_mode: str) -> None:
  if gate_mode == 'sample':
    raise ValueError("evaluation traces use fixed gates: gate_mode='deterministic' or 'off'.")


def adaptive_learner(name: str, loss_fn: maml.LossFn, accuracy_fn: Callable | None, *,
                     adapt_keys: tuple[str, ...] | None = None, first_order: bool | None = None,
                     init_extra: Callable = no_extra) -> Learner:
  """A MAML-style learner: SGD on the support set (``maml.adapt_task``), query loss after.

  Args:
    adapt_keys: top-level parameter names adapted in the inner loop (None: all).
    first_order: overrides ``settings.first_order`` when not None.
    init_extra: extra meta-parameter groups (Meta-SGD's learning rates).
  """
  def resolve(settings):
    return settings if first_order is None else settings._replace(first_order=first_order)

  def task_loss(meta_params, task, noise, *, settings, gate_mode='sample', fixed_masks=None):
    adapted, effective = maml.adapt_task(meta_params, task, noise, loss_fn, resolve(settings), gate_mode, None,
                                         fixed_masks, adapt_keys)
    return loss_fn(effective(adapted), task.query_inputs, task.query_targets)

  def task_traces(meta_params, task, *, settings, gate_mode='deterministic', fixed_masks=None):
    check_eval_mode(gate_mode)
    (_, trace), _ = maml.adapt_task(meta_params, task, None, loss_fn, resolve(settings), gate_mode,
                                    query_metrics(task, loss_fn, accuracy_fn), fixed_masks, adapt_keys)
    return trace

  return Learner(name, task_loss, batch_mean(task_loss), task_traces, init_extra)


@functools.lru_cache(maxsize=64)
def get_learner(name: str, *, loss_fn: maml.LossFn, accuracy_fn: Callable | None = None,
                embed_fn: Callable | None = None, head_keys: tuple[str, ...] = ()) -> Learner:
  """Builds the learner called ``name`` (cached: the same inputs give the same object, so jit caches hit).

  Args:
    name: one of ``LEARNERS``.
    loss_fn: ``(params, inputs, targets) -> scalar``.
    accuracy_fn: ``(params, inputs, labels) -> scalar`` for classification, or None.
    embed_fn: ``(params, inputs) -> [n, features]`` (ProtoNets).
    head_keys: top-level parameter names of the head (ANIL).

  Raises:
    ValueError: for an unknown name (the message lists the valid ones), ANIL
      without ``head_keys`` or ProtoNets without ``embed_fn``.
  """
  # Imported here: these modules build on this one.
  from metaprune_jax.meta import meta_sgd  # pylint: disable=g-import-not-at-top
  from metaprune_jax.meta import protonet  # pylint: disable=g-import-not-at-top
  from metaprune_jax.meta import reptile  # pylint: disable=g-import-not-at-top
  if name == 'maml':
    return adaptive_learner('maml', loss_fn, accuracy_fn)
  if name == 'fomaml':
    return adaptive_learner('fomaml', loss_fn, accuracy_fn, first_order=True)
  if name == 'anil':
    if not head_keys:
      raise ValueError("algorithm 'anil' adapts only the head, but this problem names no head_keys.")
    return adaptive_learner('anil', loss_fn, accuracy_fn, adapt_keys=tuple(head_keys))
  if name == 'metasgd':
    return meta_sgd.meta_sgd(loss_fn, accuracy_fn)
  if name == 'reptile':
    return reptile.reptile(loss_fn, accuracy_fn)
  if name == 'protonet':
    if embed_fn is None:
      raise ValueError("algorithm 'protonet' needs an embedding, but this problem has no embed_fn "
                       '(use a classification task such as --task=omniglot).')
    return protonet.protonet(embed_fn)
  raise ValueError(f'algorithm={name!r} is unknown; valid algorithms: {", ".join(LEARNERS)}.')
