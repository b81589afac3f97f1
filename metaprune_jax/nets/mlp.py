"""A plain MLP (Flax linen) whose masking happens functionally on its params.

The module itself knows nothing about masks: callers pass
``apply_masks(params, masks)`` to ``model.apply``, which keeps one masking helper
for every architecture and makes an all-ones mask exactly the dense net.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from metaprune_jax.nets import matmul

ACTIVATIONS = {'relu': nn.relu, 'tanh': jnp.tanh, 'gelu': nn.gelu, 'swish': nn.swish}


class MLP(nn.Module):
  """``[batch, in] -> [batch, num_outputs]`` with ``hidden_sizes`` hidden layers.

  Submodules are named ``Dense_0 ... Dense_{len(hidden_sizes)}`` (the last is the
  readout). ``kernel_init_std > 0`` draws kernels from a normal truncated at two
  standard deviations with that std (Finn et al.'s sinusoid code used 0.01);
  0 keeps Flax's LeCun-normal default. ``layout_matmul`` (default) runs the
  ``Dense`` layers through ``nets.matmul``, whose reverse-mode gradients keep
  XLA:CPU's fast dot layout; it has no
  forward mode, so set it False for ``jax.jvp`` / ``jacfwd`` / ``jax.hessian``.
  Parameters and outputs are the same either way.
  """
  hidden_sizes: Sequence[int] = (40, 40)
  num_outputs: int = 1
  activation: str = 'relu'
  kernel_init_std: float = 0.0
  layout_matmul: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = ACTIVATIONS[self.activation]
    init = (nn.initializers.truncated_normal(self.kernel_init_std) if self.kernel_init_std > 0
            else nn.initializers.lecun_normal())
    dot_general = matmul.dot_general if self.layout_matmul else None
    for width in self.hidden_sizes:
      x = act(nn.Dense(width, kernel_init=init, dot_general=dot_general)(x))
    return nn.Dense(self.num_outputs, kernel_init=init, dot_general=dot_general)(x)


def make_mlp(hidden_sizes: Sequence[int] = (40, 40), num_outputs: int = 1, activation: str = 'relu',
             kernel_init_std: float = 0.0, layout_matmul: bool = True) -> MLP:
  """Builds an ``MLP``; raises ``ValueError`` naming the field on bad settings."""
  if activation not in ACTIVATIONS:
    raise ValueError(f'--config.activation={activation!r} is unknown; use one of {sorted(ACTIVATIONS)}.')
  if not hidden_sizes or any(int(w) <= 0 for w in hidden_sizes):
    raise ValueError(f'--config.hidden_sizes={tuple(hidden_sizes)} must be a non-empty list of positive widths.')
  if kernel_init_std < 0:
    raise ValueError(f'--config.kernel_init_std={kernel_init_std} must be >= 0 (0: LeCun normal).')
  return MLP(hidden_sizes=tuple(int(w) for w in hidden_sizes), num_outputs=num_outputs, activation=activation,
             kernel_init_std=float(kernel_init_std), layout_matmul=bool(layout_matmul))
