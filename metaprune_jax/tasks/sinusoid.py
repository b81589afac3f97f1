"""Sinusoid regression tasks (Finn, Abbeel & Levine, 2017), sampled on device.

Each task is ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5]``, phase
``phi ~ U[0, pi]`` and inputs ``x ~ U[-5, 5]``. One uniform draw per task feeds
amplitude, phase and every input, so sampling is a single RNG call inside the
jitted meta-step.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from metaprune_jax import types


class SinusoidRanges(NamedTuple):
  amplitude: tuple[float, float] = (0.1, 5.0)
  phase: tuple[float, float] = (0.0, math.pi)
  inputs: tuple[float, float] = (-5.0, 5.0)


def _scale(u: jax.Array, bounds: tuple[float, float]) -> jax.Array:
  return bounds[0] + (bounds[1] - bounds[0]) * u


def sample_sinusoid_tasks(key: types.PRNGKey, *, num_tasks: int, num_support: int, num_query: int,
                          ranges: SinusoidRanges = SinusoidRanges()) -> types.TaskBatch:
  """Draws ``num_tasks`` sinusoids with K-shot support and query sets.

  Returns:
    ``TaskBatch`` with inputs/targets ``[num_tasks, num_support, 1]`` (support)
    and ``[num_tasks, num_query, 1]`` (query), float32.
  """
  u = jax.random.uniform(key, (num_tasks, 2 + num_support + num_query), jnp.float32)
  amplitude = _scale(u[:, 0], ranges.amplitude)[:, None, None]
  phase = _scale(u[:, 1], ranges.phase)[:, None, None]
  x = _scale(u[:, 2:], ranges.inputs)[..., None]
  y = amplitude * jnp.sin(x - phase)
  return types.TaskBatch(x[:, :num_support], y[:, :num_support], x[:, num_support:], y[:, num_support:])
