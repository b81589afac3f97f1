"""Prototypical networks (Snell et al. 2017) with gates: no inner loop.

Per task: embed support and query sets (``embed_fn`` on the gated / masked
parameters; with Conv-4's batch norm each set is normalised with its own
statistics, or, ``inductive``, the query set with the support set's),
prototypes = mean support embedding per class, logits = minus the squared
Euclidean distance to each prototype, loss = softmax cross-entropy.

The number of classes is not static: labels index a ``[support_size]`` slot
axis and slots with no support example get a logit of ``-1e30`` (probability
0), so any N-way episode works with one compiled function per shape. The head
parameters (if any) are unused. Evaluation traces repeat the one value for every
"inner step" so tables line up with the adaptive learners.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from metaprune_jax import losses
from metaprune_jax.meta import adapt
from metaprune_jax.meta import learner as learner_lib
from metaprune_jax.meta.settings import Execution

_EMPTY_LOGIT = -1e30


def prototype_logits(support_embeddings: jax.Array, support_labels: jax.Array,
                     query_embeddings: jax.Array) -> jax.Array:
  """Minus squared distances to class prototypes.

  Args:
    support_embeddings: ``[support, features]``.
    support_labels: int ``[support]`` in ``0..support-1``.
    query_embeddings: ``[query, features]``.

  Returns:
    ``[query, support]`` logits; slot ``c`` is class ``c``; empty slots ``-1e30``.
  """
  num_slots = support_embeddings.shape[0]
  one_hot = jax.nn.one_hot(support_labels, num_slots, dtype=support_embeddings.dtype)  # [support, slots]
  counts = jnp.sum(one_hot, axis=0)
  prototypes = (one_hot.T @ support_embeddings) / jnp.maximum(counts, 1.0)[:, None]
  sq_dist = (jnp.sum(jnp.square(query_embeddings), -1, keepdims=True) - 2.0 * query_embeddings @ prototypes.T
             + jnp.sum(jnp.square(prototypes), -1)[None, :])
  return jnp.where(counts[None, :] > 0, -sq_dist, _EMPTY_LOGIT)


def protonet(embed_fn: Callable, *, execution: Execution = Execution(),
             inductive: bool = False) -> learner_lib.Learner:
  """The ProtoNet learner for ``embed_fn(params, inputs) -> [n, features]``.

  ``inductive``: the query embeddings are ``embed_fn(params, query, reference=support)``
  (``learner`` module docstring); the support embeddings use the support set's
  own statistics either way.
  """
  def metrics(meta_params, task, noise, settings, gate_mode, fixed_masks):
    params = adapt.masked_params(meta_params, noise, gate_mode, settings.hc, fixed_masks)
    logits = prototype_logits(embed_fn(params, task.support_inputs), task.support_targets,
                              embed_fn(params, task.query_inputs, **learner_lib.query_reference(task, inductive)))
    loss = losses.softmax_cross_entropy(logits, task.query_targets)  # Labels, or distillation's distributions.
    accuracy = jnp.mean((jnp.argmax(logits, -1) == losses.labels_of(task.query_targets, logits.ndim)).astype(
        jnp.float32))
    return loss, accuracy

  def task_loss(meta_params, task, noise, *, settings, gate_mode='sample', fixed_masks=None):
    return metrics(meta_params, task, noise, settings, gate_mode, fixed_masks)[0]

  def task_traces(meta_params, task, *, settings, gate_mode='deterministic', fixed_masks=None):
    learner_lib.check_eval_mode(gate_mode)
    loss, accuracy = metrics(meta_params, task, None, settings, gate_mode, fixed_masks)
    repeat = lambda x: jnp.full((settings.num_inner_steps + 1,), x)  # pylint: disable=unnecessary-lambda-assignment
    return {'loss': repeat(loss), 'accuracy': repeat(accuracy)}

  return learner_lib.Learner('protonet', task_loss, learner_lib.batch_mean(task_loss, execution), task_traces,
                            learner_lib.no_extra, execution)
