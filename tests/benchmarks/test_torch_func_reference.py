"""The torch.func yardstick computes the library's second-order MAML meta-loss and meta-gradient.

PyTorch is not a project dependency, so this module is skipped where it is not
installed (CI); run it from an environment with both, e.g. the one in
``benchmarks/torch_func_reference.py``'s docstring plus ``pip install -r requirements.txt``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metaprune_jax import types
from metaprune_jax.meta import maml
from metaprune_jax.meta.settings import InnerSettings
from metaprune_jax.nets import conv

torch = pytest.importorskip('torch')
from benchmarks import torch_func_reference as reference  # pylint: disable=g-import-not-at-top,wrong-import-position

_TASKS, _WAYS, _QUERIES = 3, 5, 2


def _to_torch_layout(params) -> dict[str, np.ndarray]:
  """Conv-4 params (HWIO kernels, ``[features, ways]`` head) in the reference's names and layouts."""
  out = {}
  for i in range(reference.DEPTH):
    out[f'conv_{i}'] = np.asarray(params[f'conv_{i}']['kernel']).transpose(3, 2, 0, 1)
    out[f'scale_{i}'] = np.asarray(params[f'norm_{i}']['scale'])
    out[f'offset_{i}'] = np.asarray(params[f'norm_{i}']['offset'])
  out['head_kernel'] = np.asarray(params['head']['kernel']).T
  out['head_bias'] = np.asarray(params['head']['bias'])
  return out


def test_meta_loss_and_gradient_match_the_library():
  params = conv.init_conv4(jax.random.key(0), num_classes=_WAYS)
  # Batch-norm parameters away from (1, 0), so their gradients are checked in a general position too.
  for i in range(reference.DEPTH):
    params[f'norm_{i}'] = {'scale': 1.0 + 0.1 * jax.random.normal(jax.random.key(10 + i), (64,)),
                           'offset': 0.1 * jax.random.normal(jax.random.key(20 + i), (64,))}
  keys = jax.random.split(jax.random.key(1), 2)
  tasks = types.TaskBatch(
      support_inputs=jax.random.uniform(keys[0], (_TASKS, _WAYS, 28, 28, 1)),
      support_targets=jnp.tile(jnp.arange(_WAYS), (_TASKS, 1)),
      query_inputs=jax.random.uniform(keys[1], (_TASKS, _WAYS * _QUERIES, 28, 28, 1)),
      query_targets=jnp.tile(jnp.repeat(jnp.arange(_WAYS), _QUERIES), (_TASKS, 1)))

  def loss_fn(p, images, labels):
    logits = conv.conv4_apply(p, images, method='patches')
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

  settings = InnerSettings(inner_lr=reference.INNER_LR, num_inner_steps=1, first_order=False)
  meta_loss = functools.partial(maml.maml(loss_fn).batch_loss, key=jax.random.key(2), settings=settings,
                                gate_mode='off')
  loss, grads = jax.value_and_grad(lambda p: meta_loss({'params': p, 'gate_logits': None}, tasks))(params)

  nchw = lambda x: np.asarray(x).transpose(0, 1, 4, 2, 3)  # pylint: disable=unnecessary-lambda-assignment
  batch = (nchw(tasks.support_inputs), np.asarray(tasks.support_targets, np.int64), nchw(tasks.query_inputs),
           np.asarray(tasks.query_targets, np.int64))
  torch_out = reference.meta_loss_and_grads(_to_torch_layout(params), batch)

  np.testing.assert_allclose(torch_out['loss'], loss, rtol=1e-4)
  expected = _to_torch_layout(grads)
  for name, value in expected.items():
    scale = np.abs(value).max()
    np.testing.assert_allclose(torch_out[name], value, atol=1e-4 * scale, rtol=0, err_msg=name)
