"""``Problem``: what a task family gives the rest of the build (samplers, net, losses, counters)."""

from collections.abc import Callable
from typing import NamedTuple

from metaprune_jax import types


class Problem(NamedTuple):
  """Everything the training loop needs to know about a task family.

  The functions that see query inputs (``loss_fn``, ``accuracy_fn``,
  ``embed_fn``, ``apply_fn``) also take an optional ``reference=`` batch, the
  task's support inputs, which inductive learners pass on the query set
  (``meta.learner``): a net with batch norm takes its statistics from it; a net
  without ignores it.

  Attributes:
    init_params: ``key -> params``.
    loss_fn: ``(params, inputs, targets) -> scalar``.
    train_sampler: ``(key, num_tasks) -> TaskBatch`` for meta-training.
    eval_sampler: ``(key, num_tasks, shots) -> TaskBatch`` for evaluation.
    metric: name of the reported metric (``'mse'`` or ``'accuracy'``).
    accuracy_fn: classification only: ``(params, inputs, labels) -> scalar``
      accuracy in [0, 1]; None for regression.
    embed_fn: ``(params, inputs) -> [n, features]`` penultimate features (for
      prototypical networks); None when the model has no embedding.
    head_keys: top-level parameter names of the output head (what ANIL adapts).
    flops_fn: ``(params, masks) -> dict`` FLOPs and structure report of the
      (masked) network, or None.
    expand_units: the net's hidden-unit coupling for the sparsity counters
      (``masks.sparsity``: ``(params, unit_keep) -> keep factors``), or None.
    apply_fn: ``(params, inputs) -> outputs`` the network's predictions (regression)
      or logits (classification), what ``loss_fn`` compares with the targets.
  """
  init_params: Callable[[types.PRNGKey], types.Params]
  loss_fn: Callable
  train_sampler: Callable[[types.PRNGKey, int], types.TaskBatch]
  eval_sampler: Callable[[types.PRNGKey, int, int], types.TaskBatch]
  metric: str
  accuracy_fn: Callable | None = None
  embed_fn: Callable | None = None
  head_keys: tuple[str, ...] = ()
  flops_fn: Callable | None = None
  expand_units: Callable | None = None
  apply_fn: Callable | None = None
