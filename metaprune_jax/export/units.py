"""Shared steps of structured removal: gate patterns, constant units, slicing a tree by kept units.

A unit (neuron, channel) whose every incoming weight is pruned computes a
constant ``act(bias)``. Whether it can be removed depends on what happens to
the model after export:

* a forward pass only (``adapts=False``: prototypical networks, plain
  inference): the constant is folded into the next layer's bias and the unit
  removed;
* few-shot adaptation (``adapts=True``: MAML and friends): the masked model
  adapts the unit's bias and its outgoing weights (they are not masked), so the
  unit stays unless its constant is 0 with a zero derivative (a ReLU whose
  bias is <= 0): then no gradient ever reaches it and it is dead for good.

Removal decisions read the gate patterns (``mask != 0``), never the weights'
values: a weight that is zero but not pruned moves when the model adapts.
"""

import jax
import jax.numpy as jnp
import numpy as np


def full_pattern(param, mask) -> np.ndarray:
  """Boolean ``param.shape``: True where the weight is kept (``mask`` broadcast; None keeps everything)."""
  shape = np.shape(param)
  if mask is None:
    return np.ones(shape, bool)
  return np.broadcast_to(np.asarray(mask) != 0, shape).copy()


def folded(param, mask) -> np.ndarray:
  """``param * mask`` as float32 numpy (``mask`` None: ``param``)."""
  value = np.asarray(param, np.float32)
  return value if mask is None else (value * np.asarray(mask, np.float32)).astype(np.float32)


def constant_removable(activation, pre_activation: np.ndarray, adapts: bool) -> np.ndarray:
  """Boolean per unit: may a unit with no incoming weight and this constant pre-activation be removed?

  Args:
    activation: the unit's nonlinearity (a JAX function).
    pre_activation: ``[units]`` the constant pre-activation (bias, or a batch-norm offset).
    adapts: whether the exported model is adapted (module docstring).

  Returns:
    ``[units]``: always True without adaptation; with it, where the output and its
    derivative are both exactly 0.
  """
  pre = jnp.asarray(pre_activation, jnp.float32)
  if not adapts:
    return np.ones(pre.shape, bool)
  value = np.asarray(activation(pre))
  slope = np.asarray(jax.vmap(jax.grad(lambda z: activation(z)))(pre))
  return (value == 0) & (slope == 0)


def take(array: np.ndarray, axis: int, keep: np.ndarray | None) -> np.ndarray:
  """``array`` restricted to the kept indices along ``axis`` (``keep`` None: unchanged)."""
  return array if keep is None else np.take(array, np.flatnonzero(keep), axis=axis)
