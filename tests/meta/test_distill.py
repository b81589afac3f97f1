"""``meta.distill``: blended targets give the distillation objective's gradients exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metaprune_jax import losses
from metaprune_jax import types
from metaprune_jax.meta import distill


@pytest.mark.parametrize('weight', [0.0, 0.3, 1.0])
def test_blended_distribution_gives_the_blend_of_the_two_cross_entropies(weight):
  rng = np.random.default_rng(0)
  labels = jnp.asarray(rng.integers(0, 5, 8))
  teacher = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
  targets = distill.soft_targets(labels, teacher, weight, regression=False, temperature=2.0)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)

  def blended(logits):
    return losses.softmax_cross_entropy(logits, targets)

  def objective(logits):
    hard = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    soft = jnp.mean(optax.softmax_cross_entropy(logits, jax.nn.softmax(teacher / 2.0)))
    return (1 - weight) * hard + weight * soft

  logits = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
  np.testing.assert_allclose(blended(logits), objective(logits), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(blended)(logits), jax.grad(objective)(logits), atol=1e-6)


def test_blended_values_give_the_blend_of_the_two_mse_gradients():
  rng = np.random.default_rng(1)
  y, t = (jnp.asarray(rng.normal(size=(10, 1)), jnp.float32) for _ in range(2))
  targets = distill.soft_targets(y, t, 0.4, regression=True)
  f = jnp.asarray(rng.normal(size=(10, 1)), jnp.float32)
  blended = jax.grad(lambda p: jnp.mean((p - targets) ** 2))(f)
  objective = jax.grad(lambda p: 0.6 * jnp.mean((p - y) ** 2) + 0.4 * jnp.mean((p - t) ** 2))(f)
  np.testing.assert_allclose(blended, objective, atol=1e-6)


def test_distilled_sampler_runs_the_teacher_per_task_without_gradient():
  def sampler(key, num_tasks):
    x = jax.random.normal(key, (num_tasks, 4, 1))
    return types.TaskBatch(x, 2 * x, x + 1, 2 * (x + 1))

  def teacher(support_x, support_y, query_x):  # Fits the slope from the support set: exact here.
    slope = jnp.sum(support_x * support_y) / jnp.sum(support_x ** 2)
    return slope * query_x + 0.5

  sample = distill.distilled_sampler(sampler, teacher, 0.5, regression=True)
  tasks = jax.jit(sample, static_argnums=1)(jax.random.key(0), 3)
  np.testing.assert_allclose(tasks.query_targets, 2 * tasks.query_inputs + 0.25, atol=1e-5)
  with pytest.raises(ValueError, match='distill.weight'):
    distill.distilled_sampler(sampler, teacher, 1.5, regression=True)


def test_labels_of_a_distribution_are_its_argmax():
  probs = jnp.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
  np.testing.assert_array_equal(losses.labels_of(probs, 2), [1, 0])
  np.testing.assert_array_equal(losses.labels_of(jnp.array([2, 1]), 2), [2, 1])
