"""Small parameter trees shared by the masks tests."""

import jax
import jax.numpy as jnp

from metaprune_jax.nets import rnn


def mlp_params():
  """Two Dense layers: kernels ``[3, 5]`` and ``[5, 2]`` (25 weights), biases ``[5]`` and ``[2]``."""
  return {'Dense_0': {'kernel': jnp.ones((3, 5)), 'bias': jnp.zeros(5)},
          'Dense_1': {'kernel': jnp.ones((5, 2)), 'bias': jnp.zeros(2)}}


def rnn_params(cell='lstm', hidden=6):
  """An LSTM/GRU (3 inputs, 2 outputs) with a ``unit_scale`` leaf ``[hidden]``."""
  return rnn.INIT[cell](jax.random.key(0), 3, hidden, 2, unit_scale=True)


def effective_keep(params, gates):
  """0/1 (or gate-valued) effective weights: ones pushed through the gates and the net's unit expansion."""
  ones = jax.tree.map(jnp.ones_like, params)
  return rnn.effective_params(ones, gates)
