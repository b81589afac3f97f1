"""Sparsity schedules (pure functions of the step) and weight rewinding.

Each factory validates its hyperparameters, binds them in a closure and returns
a ``Schedule``: ``schedule(step) -> sparsity``, a float32 array with the shape
of ``step`` built from ``jnp`` ops only, so it works on Python ints, traced
steps inside ``jax.jit`` and arrays of steps alike. Every schedule is
non-decreasing in ``step`` and returns exactly ``float32(target_sparsity)`` at
and after its end step. Feed the value to ``select.topk_masks`` (which accepts
a traced sparsity, so a jitted train step does not recompile as it changes).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from metaprune_jax import types

Schedule = Callable[[jax.typing.ArrayLike], jax.Array]

ITERATIVE_MODES = ('geometric', 'linear')


def _check_target(target_sparsity: float) -> float:
  value = float(target_sparsity)
  if not 0.0 <= value < 1.0:
    raise ValueError(f'target_sparsity must be in [0, 1), got {target_sparsity!r}.')
  return value


def _check_int(value, name: str, minimum: int) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
    raise ValueError(f'{name} must be an int >= {minimum}, got {value!r}.')
  return value


def polynomial_schedule(target_sparsity: float, begin_step: int, end_step: int, *,
                        initial_sparsity: float = 0.0, power: int = 3,
                        update_every_steps: int = 1) -> Schedule:
  """Gradual magnitude pruning schedule (Zhu & Gupta 2017).

  ``s(t) = s_f + (s_i - s_f) * (1 - (t_q - t_0) / (t_1 - t_0)) ** power`` for
  ``t_0 <= t < t_1``, where ``t_q = t_0 + floor((t - t_0) / update_every_steps)
  * update_every_steps`` holds the value constant between mask updates. Before
  ``t_0 = begin_step`` the sparsity is 0; from ``t_1 = end_step`` on it is
  exactly ``s_f = target_sparsity``. Pruning is fast early (many redundant
  weights) and slows as the network gets sparse.

  Args:
    target_sparsity: final sparsity ``s_f`` in ``[0, 1)``.
    begin_step: ``t_0 >= 0``, first pruning step (sparsity ``s_i`` there).
    end_step: ``t_1 > t_0``, the step from which ``s_f`` holds.
    initial_sparsity: ``s_i`` in ``[0, s_f]``.
    power: exponent (3 in the paper), ``>= 1``.
    update_every_steps: ``>= 1``; steps between mask updates.

  Returns:
    ``schedule(step) -> float32 sparsity`` with the shape of ``step``.
  """
  target = _check_target(target_sparsity)
  begin_step = _check_int(begin_step, 'begin_step', 0)
  end_step = _check_int(end_step, 'end_step', begin_step + 1)
  power = _check_int(power, 'power', 1)
  every = _check_int(update_every_steps, 'update_every_steps', 1)
  if not 0.0 <= float(initial_sparsity) <= target:
    raise ValueError(f'initial_sparsity must be in [0, target_sparsity={target}], '
                     f'got {initial_sparsity!r}.')
  initial = float(initial_sparsity)

  def schedule(step):
    step = jnp.asarray(step)
    since = jnp.maximum(step - begin_step, 0)
    quantized = (since // every) * every
    progress = jnp.clip(quantized.astype(jnp.float32) / (end_step - begin_step), 0.0, 1.0)
    value = target + (initial - target) * (1.0 - progress) ** power
    value = jnp.where(step >= end_step, target, value)
    return jnp.where(step >= begin_step, value, 0.0).astype(jnp.float32)
  return schedule


def iterative_schedule(target_sparsity: float, num_cycles: int, steps_per_cycle: int, *,
                       begin_step: int = 0, mode: str = 'geometric') -> Schedule:
  """Iterative prune -> fine-tune cycles (Han et al. 2015; Frankle & Carbin 2019).

  Cycle ``c = 1..C`` (``C = num_cycles``) prunes at step
  ``begin_step + (c - 1) * steps_per_cycle`` and then fine-tunes for
  ``steps_per_cycle`` steps at sparsity ``s_c``:

  * ``'geometric'``: ``s_c = 1 - (1 - s_f) ** (c / C)``, i.e. every cycle
    removes the same fraction ``1 - (1 - s_f) ** (1 / C)`` of the weights that
    are still there (the lottery-ticket recipe, e.g. 20% per round).
  * ``'linear'``: ``s_c = s_f * c / C``, equal increments.

  Sparsity is 0 before ``begin_step`` and exactly ``s_f`` from the last
  pruning step ``begin_step + (C - 1) * steps_per_cycle`` on.

  Args:
    target_sparsity: final sparsity ``s_f`` in ``[0, 1)``.
    num_cycles: ``C >= 1``.
    steps_per_cycle: ``>= 1`` fine-tuning steps between prunes.
    begin_step: ``>= 0``, step of the first prune.
    mode: 'geometric' or 'linear'.

  Returns:
    ``schedule(step) -> float32 sparsity`` with the shape of ``step``.
  """
  target = _check_target(target_sparsity)
  num_cycles = _check_int(num_cycles, 'num_cycles', 1)
  steps_per_cycle = _check_int(steps_per_cycle, 'steps_per_cycle', 1)
  begin_step = _check_int(begin_step, 'begin_step', 0)
  if mode not in ITERATIVE_MODES:
    raise ValueError(f'mode must be one of {list(ITERATIVE_MODES)}, got {mode!r}.')

  def schedule(step):
    step = jnp.asarray(step)
    since = step - begin_step
    cycle = jnp.where(since >= 0, since // steps_per_cycle + 1, 0)
    cycle = jnp.clip(cycle, 0, num_cycles)
    frac = cycle.astype(jnp.float32) / num_cycles
    if mode == 'geometric':
      value = 1.0 - (1.0 - target) ** frac
    else:
      value = target * frac
    value = jnp.where(cycle >= num_cycles, target, value)
    return jnp.where(cycle > 0, value, 0.0).astype(jnp.float32)
  return schedule


def rewind(params_now: types.Params, params_early: types.Params, masks: types.Masks, *,
           rewind_dense: bool = True) -> types.Params:
  """Weight rewinding: the early weights under the current mask (Frankle et al. 2020).

  Args:
    params_now: current (trained, pruned) parameters; used for structure and,
      with ``rewind_dense=False``, for the leaves whose mask is ``None``.
    params_early: parameters saved early in training (step 0 for the original
      lottery ticket, or a few hundred steps in), same structure.
    masks: current mask tree mirroring the params (``None`` = dense leaf).
    rewind_dense: if True (default), unmasked leaves are rewound as well (as in
      the lottery-ticket procedure); if False they keep their current values.

  Returns:
    ``params_early * masks`` on masked leaves (in each leaf's dtype), early or
    current values elsewhere.
  """
  if jax.tree.structure(params_now) != jax.tree.structure(params_early):
    raise ValueError('params_early must have the structure of params_now, got '
                     f'{jax.tree.structure(params_early)} vs {jax.tree.structure(params_now)}.')

  def fn(now, early, m):
    if m is None:
      return early if rewind_dense else now
    return (early * m).astype(early.dtype)
  return jax.tree.map(fn, params_now, params_early, masks)
