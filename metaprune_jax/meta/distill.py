"""Knowledge distillation for meta-training: a teacher's post-adaptation query predictions as soft targets.

For each task of a meta-batch the teacher (a fixed, usually dense, meta-trained
model) adapts on the support set as its learner does and predicts the query
set; the student's query targets become a blend of the labels and those
predictions, with weight ``weight`` on the teacher:

* regression: ``(1 - w) * y + w * t``. The MSE to that blend differs from
  ``(1 - w) * MSE(y) + w * MSE(t)`` by a constant, so the gradients are the
  distillation objective's exactly;
* classification: ``(1 - w) * one_hot(y) + w * softmax(t / temperature)``, a
  distribution; cross-entropy is linear in the target, so this is exactly
  ``(1 - w) * CE(y) + w * CE(teacher)`` (``losses.softmax_cross_entropy`` takes
  labels or distributions).

The teacher's predictions are computed inside the jitted meta-step (``vmap``
over tasks, no gradient) by wrapping the task sampler, so no learner changes.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from metaprune_jax import types

TeacherPredict = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
"""``(support_inputs, support_targets, query_inputs) -> query outputs`` of one task."""


def soft_targets(query_targets: jax.Array, teacher_outputs: jax.Array, weight: float, *, regression: bool,
                 temperature: float = 1.0) -> jax.Array:
  """The blended query targets of one task batch (module docstring).

  Args:
    query_targets: regression ``[..., out]`` values, or classification integer labels ``[...]``.
    teacher_outputs: the teacher's predictions ``[..., out]`` or logits ``[..., classes]``.
    weight: the teacher's weight in ``[0, 1]``.
    regression: blend values (True) or distributions (False).
    temperature: softmax temperature of the teacher's logits.

  Returns:
    ``[..., out]`` values or ``[..., classes]`` distributions.
  """
  teacher_outputs = jax.lax.stop_gradient(teacher_outputs)
  if regression:
    return (1.0 - weight) * query_targets + weight * teacher_outputs.reshape(query_targets.shape)
  labels = jax.nn.one_hot(query_targets, teacher_outputs.shape[-1], dtype=teacher_outputs.dtype)
  return (1.0 - weight) * labels + weight * jax.nn.softmax(teacher_outputs / temperature, axis=-1)


def distilled_sampler(sampler: Callable[[types.PRNGKey, int], types.TaskBatch], teacher: TeacherPredict,
                      weight: float, *, regression: bool, temperature: float = 1.0):
  """Wraps a meta-training task sampler so its query targets carry the teacher's predictions.

  Args:
    sampler: ``(key, num_tasks) -> TaskBatch``.
    teacher: one task's post-adaptation query predictions (``TeacherPredict``).
    weight: the teacher's weight in ``[0, 1]``.
    regression: MSE task (blend values) or classification (blend distributions).
    temperature: softmax temperature of the teacher's logits.

  Returns:
    ``(key, num_tasks) -> TaskBatch`` with blended ``query_targets``.
  """
  if not 0.0 <= weight <= 1.0:
    raise ValueError(f'--config.distill.weight={weight} must be in [0, 1].')
  if temperature <= 0:
    raise ValueError(f'--config.distill.temperature={temperature} must be > 0.')

  def sample(key, num_tasks):
    tasks = sampler(key, num_tasks)
    outputs = jax.vmap(teacher)(tasks.support_inputs, tasks.support_targets, tasks.query_inputs)
    return tasks._replace(query_targets=soft_targets(tasks.query_targets, outputs, weight, regression=regression,
                                                     temperature=temperature))
  return sample


def teacher_agreement(teacher_outputs: jax.Array, query_targets: jax.Array, *, regression: bool) -> jax.Array:
  """How well the teacher fits the labels: MSE (regression) or accuracy (classification), for reports."""
  if regression:
    return jnp.mean((teacher_outputs.reshape(query_targets.shape) - query_targets) ** 2)
  return jnp.mean(jnp.argmax(teacher_outputs, -1) == query_targets)
