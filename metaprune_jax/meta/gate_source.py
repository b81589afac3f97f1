"""Where a task's gates come from: one small interface, three implementations.

A ``GateSource`` tells the meta-step how the gates of every task are made and
constrained:

* ``groups``: the meta-parameter groups it learns (frozen once the gates are
  hardened: prune -> fine-tune).
* ``bind(learner, hardened)``: the learner whose tasks run with this source's
  gates. Shared gates leave the learner as it is (every task reads
  ``meta_params['gate_logits']``); a task-conditioned source gives each task its
  own logits, hardened per task when ``hardened`` (a static flag).
* ``expected_density(meta_params, tasks, hardened)``: the expected density the
  L0 term constrains (a scalar), or None for a dense model.
* ``harden(meta_params)``: the meta-parameters after the hardening step
  (shared gates: the lowest logits closed to exactly the target sparsity, one
  gate per gated layer kept open, the rest saturated open).
* ``hardens_per_task``: hardening happens inside every task (``bind(...,
  hardened=True)``) rather than once in ``harden``.

Implementations: ``no_gates()`` (dense), ``shared_gates(...)`` (one mask for
every task) and ``meta.meta_pruner.meta_pruner_gates(...)`` (task-conditioned).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp

from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import harden as harden_lib
from metaprune_jax.masks import sparsity


class GateSource(NamedTuple):
  """How a meta-step's tasks get their gates (module docstring)."""
  name: str
  groups: tuple[str, ...]
  bind: Callable
  expected_density: Callable | None
  harden: Callable
  hardens_per_task: bool = False


def _unchanged(meta_params):
  return meta_params


def _same_learner(learner, hardened: bool):
  del hardened
  return learner


def no_gates() -> GateSource:
  """A dense model: nothing gated, nothing constrained."""
  return GateSource('none', (), _same_learner, None, _unchanged)


def shared_gates(hc: hard_concrete.HardConcrete = hard_concrete.HardConcrete(), *,
                 target_sparsity: float | None = None, expand_units: Callable | None = None,
                 count: str = 'weights', harden_scope: str = 'global') -> GateSource:
  """One hard-concrete gate tree, ``meta_params['gate_logits']``, shared by every task.

  Args:
    hc: hard-concrete constants.
    target_sparsity: the sparsity ``harden`` sets exactly (None: no hardening).
    expand_units: the net's hidden-unit coupling (``masks.sparsity``), or None.
    count: what the density and ``target_sparsity`` count, ``'weights'`` or ``'gates'`` (``masks.sparsity``).
    harden_scope: ``'global'`` or ``'layerwise'`` (``masks.harden``).
  """
  def expected_density(meta_params, tasks, hardened: bool):
    del tasks, hardened
    return sparsity.expected_density(meta_params['params'], meta_params['gate_logits'], hc,
                                     expand_units=expand_units, count=count)

  def harden(meta_params):
    if target_sparsity is None:
      return meta_params
    return {**meta_params, 'gate_logits': harden_lib.harden(meta_params['params'], meta_params['gate_logits'],
                                                            target_sparsity, expand_units=expand_units,
                                                            count=count, scope=harden_scope)}

  return GateSource('hard_concrete', ('gate_logits',), _same_learner, expected_density, harden)


def hardened_density(target_sparsity: float):
  """The density of gates hardened to ``target_sparsity``: a constant."""
  return jnp.asarray(1.0 - target_sparsity, jnp.float32)
