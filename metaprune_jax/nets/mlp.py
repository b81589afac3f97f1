"""A plain MLP (Flax linen) whose masking happens functionally on its params.

The module itself knows nothing about masks: callers pass
``apply_masks(params, masks)`` to ``model.apply``, which keeps one masking helper
for every architecture and makes an all-ones mask exactly the dense net.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {'relu': nn.relu, 'tanh': jnp.tanh, 'gelu': nn.gelu, 'swish': nn.swish}


class MLP(nn.Module):
  """``[batch, in] -> [batch, num_outputs]`` with ``hidden_sizes`` hidden layers.

  Submodules are named ``Dense_0 ... Dense_{len(hidden_sizes)}`` (the last is the
  readout).
  """
  hidden_sizes: Sequence[int] = (40, 40)
  num_outputs: int = 1
  activation: str = 'relu'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = ACTIVATIONS[self.activation]
    for width in self.hidden_sizes:
      x = act(nn.Dense(width)(x))
    return nn.Dense(self.num_outputs)(x)


def make_mlp(hidden_sizes: Sequence[int] = (40, 40), num_outputs: int = 1, activation: str = 'relu') -> MLP:
  """Builds an ``MLP``; raises ``ValueError`` naming the field on bad settings."""
  if activation not in ACTIVATIONS:
    raise ValueError(f'--config.activation={activation!r} is unknown; use one of {sorted(ACTIVATIONS)}.')
  if not hidden_sizes or any(int(w) <= 0 for w in hidden_sizes):
    raise ValueError(f'--config.hidden_sizes={tuple(hidden_sizes)} must be a non-empty list of positive widths.')
  return MLP(hidden_sizes=tuple(int(w) for w in hidden_sizes), num_outputs=num_outputs, activation=activation)
