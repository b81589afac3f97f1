"""The meta-learner contract: a ``Learner`` is a NamedTuple of pure functions.

* ``task_loss(meta_params, task, noise, *, settings, gate_mode, fixed_masks)``:
  one task's outer loss (a scalar whose gradient w.r.t. ``meta_params`` is the
  algorithm's meta-gradient); ``noise`` is this task's gate noise (or None).
* ``batch_loss(meta_params, tasks, key, *, settings, gate_mode, fixed_masks)``:
  the mean over a task batch (``adapt.mean_over_tasks``: ``vmap`` over tasks,
  each task with its own gate noise). ``meta.step.make_meta_step``
  differentiates this.
* ``task_traces(meta_params, task, *, settings, gate_mode, fixed_masks)``:
  evaluation: ``{'loss': [num_inner_steps + 1]}`` (plus ``'accuracy'`` for
  classification) before and after every inner step.
* ``init_extra(params, settings)``: extra meta-parameter groups beside
  ``params`` and ``gate_logits`` (Meta-SGD: ``{'inner_lrs': ...}``), each with
  its own outer learning rate (``meta.optimizer.outer_optimizer``).
* ``execution``: the ``Execution`` the functions were built with.

Meta-parameters are a dict ``{'params', 'gate_logits' (or None), *extra}``.
The algorithms are in ``maml.py`` (MAML, FOMAML, ANIL), ``meta_sgd.py``,
``reptile.py`` and ``protonet.py``; ``learners.get_learner`` builds one by name.

Inductive learners (``inductive=True`` where they are built) pass
``reference=task.support_inputs`` to every function they evaluate on the query
set (``loss_fn``, ``accuracy_fn``, ``embed_fn``), so a net whose outputs depend
on the batch (batch norm, ``nets.conv``) normalises the query images with the
support set's statistics: a query image's prediction then depends on the
support set and on itself alone. Without it (the default) the query set is one
batch (transductive) and those functions are called without ``reference``.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax

from metaprune_jax import types
from metaprune_jax.meta import adapt
from metaprune_jax.meta.settings import Execution
from metaprune_jax.meta.settings import InnerSettings


class Learner(NamedTuple):
  """A meta-learning algorithm as pure functions (module docstring)."""
  name: str
  task_loss: Callable
  batch_loss: Callable
  task_traces: Callable
  init_extra: Callable
  execution: Execution = Execution()


def no_extra(params, settings) -> dict:
  del params, settings
  return {}


def batch_mean(task_loss: Callable, execution: Execution) -> Callable:
  """``batch_loss`` from ``task_loss``: ``adapt.mean_over_tasks`` (gate noise per task or shared, vmap, chunks)."""
  def batch_loss(meta_params, tasks: types.TaskBatch, key: types.PRNGKey, *, settings: InnerSettings,
                 gate_mode: str = 'sample', fixed_masks=None) -> jax.Array:
    def one_task(mp, task, noise):
      return task_loss(mp, task, noise, settings=settings, gate_mode=gate_mode, fixed_masks=fixed_masks)
    return adapt.mean_over_tasks(one_task, meta_params, tasks, key, execution=execution, gate_mode=gate_mode)
  return batch_loss


def query_reference(task: types.TaskBatch, inductive: bool) -> dict:
  """The keyword arguments of a function evaluated on the query set: ``{'reference': support}`` or ``{}``."""
  return {'reference': task.support_inputs} if inductive else {}


def query_metrics(task: types.TaskBatch, loss_fn: adapt.LossFn, accuracy_fn: Callable | None, *,
                  inductive: bool = False) -> Callable:
  """``effective_params -> {'loss': scalar[, 'accuracy': scalar]}`` on the task's query set."""
  reference = query_reference(task, inductive)

  def metrics(params):
    out = {'loss': loss_fn(params, task.query_inputs, task.query_targets, **reference)}
    if accuracy_fn is not None:
      out['accuracy'] = accuracy_fn(params, task.query_inputs, task.query_targets, **reference)
    return out
  return metrics


def check_eval_mode(gate_mode: str) -> None:
  if gate_mode == 'sample':
    raise ValueError("evaluation traces use fixed gates: gate_mode='deterministic' or 'off'.")
