"""Synthetic few-shot sequence regression: forecast a task's dynamical system.

Each task is one randomly drawn dynamical system; each example in a task is a
window of ``context_length + horizon`` steps of it (unit time step). The model
sees the first ``context_length`` values and predicts the next ``horizon``.

* ``kind='oscillator'``: damped oscillator ``x(t) = A exp(-gamma t) cos(omega t + phi)``
  with task-specific ``omega ~ U[0.1, 0.6]`` rad/step (periods 10-63 steps),
  ``gamma ~ U[0, 0.03]`` per step, ``A ~ U[0.5, 2]``, ``phi ~ U[0, 2 pi)``.
  Examples differ by their start time ``t0 ~ U[0, 20)`` (so a window's
  amplitude and phase vary within a task); no observation noise.
* ``kind='ar'``: stable AR(p) process ``x_t = sum_i a_i x_{t-i} + sigma eps_t``.
  Task coefficients come from reflection (partial autocorrelation)
  coefficients ``kappa_k ~ U[-0.9, 0.9]`` through the Levinson step-up recursion,
  so every root of the characteristic polynomial lies inside the unit circle.
  The task's stationary standard deviation ``s ~ U[0.5, 1.5]`` sets the noise,
  ``sigma = s * sqrt(prod_k (1 - kappa_k^2))``. Each example is an independent
  noise realisation started from zeros and run for ``AR_BURN_IN`` steps before
  its window (near stationarity); the continuation includes fresh noise, so the
  targets carry irreducible error of std ``sigma``.

Everything is ``jnp`` and traceable: call under ``jax.jit`` with the size
arguments, ``kind`` and ``ar_order`` static.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from metaprune_jax import types

KINDS = ('oscillator', 'ar')
AR_BURN_IN = 50
"""Steps an AR example runs from the zero state before its window begins."""

STATIC_ARGNAMES = ('num_tasks', 'num_support', 'num_query', 'context_length', 'horizon',
                   'kind', 'ar_order')


def ar_coefficients_from_reflection(kappa: jax.Array) -> jax.Array:
  """Levinson step-up: reflection coefficients ``[p]`` -> AR coefficients ``[p]``.

  With every ``|kappa_k| < 1`` the process ``x_t = sum_i a_i x_{t-i} + noise``
  is stable (all roots of ``z^p - a_1 z^{p-1} - ... - a_p`` inside the unit
  circle). ``p`` is static, so the Python loop unrolls at trace time.
  """
  a = jnp.zeros((0,), kappa.dtype)
  for k in range(kappa.shape[0]):
    a = jnp.concatenate([a - kappa[k] * a[::-1], kappa[k:k + 1]])
  return a


def _oscillator(key: types.PRNGKey, num_examples: int, length: int) -> jax.Array:
  params_key, start_key = jax.random.split(key)
  omega, gamma, amplitude, phase = jax.random.uniform(
      params_key, (4,), minval=jnp.array([0.1, 0.0, 0.5, 0.0]),
      maxval=jnp.array([0.6, 0.03, 2.0, 2 * math.pi]))
  t = jax.random.uniform(start_key, (num_examples, 1), maxval=20.0) + jnp.arange(length)
  return amplitude * jnp.exp(-gamma * t) * jnp.cos(omega * t + phase)


def _autoregressive(key: types.PRNGKey, num_examples: int, length: int,
                    order: int) -> jax.Array:
  kappa_key, scale_key, noise_key = jax.random.split(key, 3)
  kappa = jax.random.uniform(kappa_key, (order,), minval=-0.9, maxval=0.9)
  coefficients = ar_coefficients_from_reflection(kappa)  # a_1 .. a_p
  stationary_std = jax.random.uniform(scale_key, (), minval=0.5, maxval=1.5)
  sigma = stationary_std * jnp.sqrt(jnp.prod(1.0 - kappa ** 2))
  noise = sigma * jax.random.normal(noise_key, (AR_BURN_IN + length, num_examples))

  def step(history, eps):  # history: [p, examples], most recent first.
    x = coefficients @ history + eps
    return jnp.concatenate([x[None], history[:-1]]), x

  _, xs = lax.scan(step, jnp.zeros((order, num_examples)), noise)
  return xs[AR_BURN_IN:].T  # [examples, length]


def sample_sequence_task(key: types.PRNGKey, *, num_support: int, num_query: int,
                         context_length: int, horizon: int, kind: str = 'oscillator',
                         ar_order: int = 2) -> tuple[jax.Array, ...]:
  """One task: ``(support_inputs, support_targets, query_inputs, query_targets)``.

  Shapes: inputs ``[n, context_length, 1]``, targets ``[n, horizon, 1]`` with
  ``n = num_support`` or ``num_query``. See ``sample_sequence_tasks``.
  """
  _check(num_tasks=1, num_support=num_support, num_query=num_query,
         context_length=context_length, horizon=horizon, kind=kind, ar_order=ar_order)
  num_examples = num_support + num_query
  length = context_length + horizon
  if kind == 'oscillator':
    series = _oscillator(key, num_examples, length)
  else:
    series = _autoregressive(key, num_examples, length, ar_order)
  series = series[..., None].astype(jnp.float32)  # [examples, length, 1]
  inputs, targets = series[:, :context_length], series[:, context_length:]
  return (inputs[:num_support], targets[:num_support],
          inputs[num_support:], targets[num_support:])


@functools.partial(jax.jit, static_argnames=STATIC_ARGNAMES)
def sample_sequence_tasks(key: types.PRNGKey, *, num_tasks: int, num_support: int,
                          num_query: int, context_length: int, horizon: int,
                          kind: str = 'oscillator', ar_order: int = 2) -> types.TaskBatch:
  """Draws ``num_tasks`` dynamical systems and forecasting windows from each.

  Args:
    key: PRNG key; task ``i`` uses ``jax.random.split(key, num_tasks)[i]``.
    num_tasks: tasks in the batch.
    num_support: windows per task for adaptation.
    num_query: windows per task for evaluation.
    context_length: observed steps per window.
    horizon: steps to forecast after the context.
    kind: ``'oscillator'`` or ``'ar'`` (see module doc).
    ar_order: ``p`` of the AR(p) process (``kind='ar'`` only).

  Returns:
    ``TaskBatch`` with inputs ``[tasks, n, context_length, 1]`` and targets (the
    continuation) ``[tasks, n, horizon, 1]``, float32.
  """
  _check(num_tasks=num_tasks, num_support=num_support, num_query=num_query,
         context_length=context_length, horizon=horizon, kind=kind, ar_order=ar_order)
  sample = functools.partial(sample_sequence_task, num_support=num_support,
                             num_query=num_query, context_length=context_length,
                             horizon=horizon, kind=kind, ar_order=ar_order)
  keys = jax.random.split(key, num_tasks)
  return types.TaskBatch(*jax.vmap(sample, in_axes=(0,))(keys))


def _check(**sizes) -> None:
  kind = sizes.pop('kind')
  if kind not in KINDS:
    raise ValueError(f'kind={kind!r} is not a sequence task; valid kinds: {list(KINDS)}.')
  for name, value in sizes.items():
    minimum = 0 if name == 'num_query' else 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
      raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}.')
