"""MAML (Finn et al. 2017), first-order MAML and ANIL (Raghu et al. 2020) as learners.

Per task: SGD on the support set (``adapt.adapt_task``: gates drawn once and
held through the inner loop), then the query loss of the adapted weights. The
meta-gradient differentiates through the inner loop (second order) unless
``first_order``. ANIL adapts only the head (``adapt_keys``); the outer gradient
still reaches the body. ``inductive``: the query loss normalises the query set
with the support set's batch statistics (``learner`` module docstring).
"""

from collections.abc import Callable

from metaprune_jax.meta import adapt
from metaprune_jax.meta import learner as learner_lib
from metaprune_jax.meta.settings import Execution


def adaptive_learner(name: str, loss_fn: adapt.LossFn, accuracy_fn: Callable | None, *,
                     execution: Execution = Execution(), adapt_keys: tuple[str, ...] | None = None,
                     first_order: bool | None = None,
                     init_extra: Callable = learner_lib.no_extra, inductive: bool = False) -> learner_lib.Learner:
  """A MAML-style learner: SGD on the support set, query loss after.

  Args:
    name: the learner's name.
    loss_fn: ``(params, inputs, targets) -> scalar``.
    accuracy_fn: ``(params, inputs, labels) -> scalar`` for classification, or None.
    execution: how the inner loop and the task batch run.
    adapt_keys: top-level parameter names adapted in the inner loop (None: all).
    first_order: overrides ``settings.first_order`` when not None.
    init_extra: extra meta-parameter groups (Meta-SGD's learning rates).
    inductive: pass ``reference=task.support_inputs`` to ``loss_fn`` / ``accuracy_fn`` on the query set.
  """
  def resolve(settings):
    return settings if first_order is None else settings._replace(first_order=first_order)

  def task_loss(meta_params, task, noise, *, settings, gate_mode='sample', fixed_masks=None):
    adapted, effective = adapt.adapt_task(meta_params, task, noise, loss_fn, resolve(settings), execution,
                                          gate_mode, None, fixed_masks, adapt_keys)
    return loss_fn(effective(adapted), task.query_inputs, task.query_targets,
                   **learner_lib.query_reference(task, inductive))

  def task_traces(meta_params, task, *, settings, gate_mode='deterministic', fixed_masks=None):
    learner_lib.check_eval_mode(gate_mode)
    metrics = learner_lib.query_metrics(task, loss_fn, accuracy_fn, inductive=inductive)
    (_, trace), _ = adapt.adapt_task(meta_params, task, None, loss_fn, resolve(settings), execution, gate_mode,
                                     metrics, fixed_masks, adapt_keys)
    return trace

  return learner_lib.Learner(name, task_loss, learner_lib.batch_mean(task_loss, execution), task_traces,
                             init_extra, execution)


def maml(loss_fn: adapt.LossFn, accuracy_fn: Callable | None = None, *,
         execution: Execution = Execution(), inductive: bool = False) -> learner_lib.Learner:
  """Second-order MAML (``settings.first_order`` still switches it)."""
  return adaptive_learner('maml', loss_fn, accuracy_fn, execution=execution, inductive=inductive)


def fomaml(loss_fn: adapt.LossFn, accuracy_fn: Callable | None = None, *,
           execution: Execution = Execution(), inductive: bool = False) -> learner_lib.Learner:
  """First-order MAML: the inner gradients are constants of the meta-gradient."""
  return adaptive_learner('fomaml', loss_fn, accuracy_fn, execution=execution, first_order=True,
                          inductive=inductive)


def anil(loss_fn: adapt.LossFn, accuracy_fn: Callable | None = None, *, head_keys: tuple[str, ...],
         execution: Execution = Execution(), inductive: bool = False) -> learner_lib.Learner:
  """ANIL: the inner loop adapts only ``head_keys``."""
  if not head_keys:
    raise ValueError("algorithm 'anil' adapts only the head, but this problem names no head_keys.")
  return adaptive_learner('anil', loss_fn, accuracy_fn, execution=execution, adapt_keys=tuple(head_keys),
                          inductive=inductive)
