"""nets.matmul: equals ``x @ w`` in value and in first and second derivatives, alone and under vmap."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from metaprune_jax.nets import matmul
from metaprune_jax.nets import mlp
from tests import test_utils


def _operands(k, n, batched_w=False):
  kx, kw = jax.random.split(jax.random.key(k * 100 + n))
  x = jax.random.normal(kx, (6, 4, k))
  w = jax.random.normal(kw, (6, k, n) if batched_w else (k, n))
  return x, w


def _loss(mm):
  return lambda x, w: jnp.sum(jnp.sin(mm(x, w)))


@pytest.mark.parametrize('k,n', [(5, 3), (3, 5), (4, 4)])  # both transpose branches
def test_value_and_gradients_equal_plain_matmul(k, n):
  x, w = _operands(k, n)
  test_utils.assert_close(matmul.matmul(x, w), x @ w, atol=1e-6)
  for got, want in zip(jax.grad(_loss(matmul.matmul), (0, 1))(x, w), jax.grad(_loss(jnp.matmul), (0, 1))(x, w)):
    test_utils.assert_close(got, want, atol=1e-5)


@pytest.mark.parametrize('k,n', [(5, 3), (3, 5)])
def test_second_order_equals_plain_matmul(k, n):
  """Differentiating the weight gradient, as second-order MAML does."""
  x, w = _operands(k, n)

  def outer(mm):
    return lambda x, w: jnp.sum(jnp.cos(jax.grad(_loss(mm), 1)(x, w)) * w)
  for got, want in zip(jax.grad(outer(matmul.matmul), (0, 1))(x, w), jax.grad(outer(jnp.matmul), (0, 1))(x, w)):
    test_utils.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('batched_w', [False, True])
def test_vmap_over_tasks_equals_plain_matmul_to_second_order(batched_w):
  x, w = _operands(5, 3, batched_w)
  w_axis = 0 if batched_w else None

  def outer(mm):
    per_task = jax.vmap(jax.grad(_loss(mm), 1), in_axes=(0, w_axis))
    return lambda x, w: jnp.sum(jnp.tanh(per_task(x, w)))
  for got, want in zip(jax.grad(outer(matmul.matmul), (0, 1))(x, w), jax.grad(outer(jnp.matmul), (0, 1))(x, w)):
    test_utils.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_dense_dot_general_hook_keeps_outputs_and_falls_back():
  x = jax.random.normal(jax.random.key(0), (3, 7, 4))
  plain, routed = nn.Dense(5), nn.Dense(5, dot_general=matmul.dot_general)
  params = plain.init(jax.random.key(1), x)
  test_utils.assert_close(routed.apply(params, x), plain.apply(params, x), atol=1e-6)
  # A contraction that is not [..., k] x [k, n] goes to lax.dot_general unchanged.
  a, b = jnp.ones((2, 3, 4)), jnp.ones((2, 4, 5))
  dims = (((2,), (1,)), ((0,), (0,)))
  test_utils.assert_close(matmul.dot_general(a, b, dims), jax.lax.dot_general(a, b, dims), atol=0)


@pytest.mark.parametrize('k,n', [(5, 3), (3, 5)])
def test_weight_gradient_uses_no_leading_axis_contraction_on_cpu(k, n):
  """The point of the module: XLA:CPU's compiled gradient has no dot contracting the left operand's rows."""
  x, w = _operands(k, n, batched_w=True)
  grad = jax.jit(jax.vmap(jax.grad(_loss(matmul.matmul), 1)))
  hlo = grad.lower(x, w).compile().as_text()
  dots = [line for line in hlo.splitlines() if ' dot(' in line and 'lhs_contracting_dims' in line]
  assert dots, 'expected a dot in the compiled gradient'
  assert not any('lhs_batch_dims={0}, lhs_contracting_dims={1}' in line for line in dots), dots


@pytest.mark.parametrize('platform, pinned', [('cpu', True), ('cuda', False), ('tpu', False)])
def test_barrier_is_chosen_for_the_platform_the_step_is_lowered_for(platform, pinned):
  """The CPU-only barrier follows the lowering platform, not the default backend at trace time."""
  x, w = _operands(5, 3, batched_w=False)
  grad = jax.jit(jax.grad(_loss(matmul.matmul), 1))
  text = grad.trace(x, w).lower(lowering_platforms=(platform,)).as_text()
  assert ('optimization_barrier' in text) == pinned


def test_mlp_layout_matmul_switch_same_outputs_and_forward_mode():
  """Default MLP: same params / outputs / gradients as plain Dense; ``layout_matmul=False`` allows forward mode."""
  x = jax.random.normal(jax.random.key(2), (7, 1))
  fast, plain = mlp.make_mlp((8, 8), 1), mlp.make_mlp((8, 8), 1, layout_matmul=False)
  params = fast.init(jax.random.key(3), x)
  assert jax.tree.structure(params) == jax.tree.structure(plain.init(jax.random.key(3), x))
  test_utils.assert_close(fast.apply(params, x), plain.apply(params, x), atol=1e-6)
  loss = lambda model: lambda p: jnp.sum(model.apply(p, x) ** 2)  # pylint: disable=unnecessary-lambda-assignment
  for got, want in zip(jax.tree.leaves(jax.grad(loss(fast))(params)), jax.tree.leaves(jax.grad(loss(plain))(params))):
    test_utils.assert_close(got, want, atol=1e-5)
  assert jax.jacfwd(lambda x: plain.apply(params, x))(x).shape == (7, 1, 7, 1)
  with pytest.raises(TypeError):
    jax.jacfwd(lambda x: fast.apply(params, x))(x)
