"""Held-out evaluation of a meta-trained model and its sparsity counters, as ``summary.json`` holds them.

The evaluation tasks come from a key folded off the seed, never from the
training stream, so every run (and every baseline) with the same seed sees the
same tasks.
"""

import functools

import jax
import ml_collections
import numpy as np

from experiments import problems
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import masking
from metaprune_jax.masks import sparsity as sparsity_lib
from metaprune_jax.meta import evaluate as evaluate_lib
from metaprune_jax.meta.learner import Learner
from metaprune_jax.meta.settings import InnerSettings

EVAL_KEY_SALT = 0x5EED


def held_out_tasks(config: ml_collections.ConfigDict, problem: problems.Problem, shots: int,
                   ways: int | None = None):
  """The ``eval.num_tasks`` evaluation tasks for ``shots`` (and ``ways``, classification)."""
  eval_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(int(config.seed)), EVAL_KEY_SALT), int(shots))
  if ways is None:
    return problem.eval_sampler(eval_key, int(config.eval.num_tasks), int(shots))
  return problem.eval_sampler(jax.random.fold_in(eval_key, int(ways)), int(config.eval.num_tasks), int(shots),
                              ways=int(ways))


def evaluate(config: ml_collections.ConfigDict, problem: problems.Problem, learner: Learner,
             settings: InnerSettings, meta_params, *, fixed_masks=None) -> dict:
  """Fresh-task evaluation for every ``eval.shots`` (and ``eval.ways``), sparse and gates-off.

  Returns ``{model: {'shots_K' | 'ways_N_shots_K': {'step_k': summary}}}`` where
  ``model`` is ``'sparse'`` and ``'gates_off'`` for a gated model, ``'dense'``
  for a dense one, and ``'sparse'`` for a model under ``fixed_masks``;
  classification adds ``'<model>/accuracy'``.
  """
  gated = meta_params.get('gate_logits') is not None
  modes = ['deterministic', 'off'] if gated else ['off']
  names = {'deterministic': 'sparse', 'off': 'gates_off' if gated else ('sparse' if fixed_masks is not None
                                                                         else 'dense')}
  steps = [int(k) for k in config.eval.steps]
  results = {}
  for ways in (tuple(config.eval.ways) or (None,)):
    for shots in config.eval.shots:
      tasks = held_out_tasks(config, problem, shots, ways)
      name = f'shots_{shots}' if ways is None else f'ways_{ways}_shots_{shots}'
      for mode in modes:
        traces = evaluate_lib.learner_traces(learner, meta_params, tasks, settings=settings, gate_mode=mode,
                                             chunk_size=int(config.eval.chunk_size), fixed_masks=fixed_masks)
        results.setdefault(names[mode], {})[name] = evaluate_lib.summarise_traces(
            traces['loss'], steps, divergence_threshold=float(config.eval.divergence_threshold),
            divergence_ratio=float(config.eval.divergence_ratio))
        if 'accuracy' in traces:
          results.setdefault(f'{names[mode]}/accuracy', {})[name] = evaluate_lib.summarise_accuracy(
              traces['accuracy'], steps)
  return results


def held_out_trace_dicts(config: ml_collections.ConfigDict, problem: problems.Problem, learner: Learner,
                         settings: InnerSettings, meta_params, *, gate_mode: str,
                         fixed_masks=None) -> dict[int, dict[str, np.ndarray]]:
  """The learner's per-task traces on the held-out tasks of ``evaluate``: ``{shots: {'loss'[, 'accuracy']:
  [eval.num_tasks, max(eval.steps) + 1]}}`` for every ``eval.shots`` (classification: at the first of
  ``eval.ways``), before and after each inner step."""
  ways = (tuple(config.eval.ways) or (None,))[0]
  return {int(shots): evaluate_lib.learner_traces(
      learner, meta_params, held_out_tasks(config, problem, shots, ways), settings=settings, gate_mode=gate_mode,
      chunk_size=int(config.eval.chunk_size), fixed_masks=fixed_masks) for shots in config.eval.shots}


def held_out_traces(config: ml_collections.ConfigDict, problem: problems.Problem, learner: Learner,
                    settings: InnerSettings, meta_params, *, gate_mode: str,
                    fixed_masks=None) -> dict[int, np.ndarray]:
  """Per-task query losses of ``held_out_trace_dicts``: ``{shots: [eval.num_tasks, max(eval.steps) + 1]}``."""
  traces = held_out_trace_dicts(config, problem, learner, settings, meta_params, gate_mode=gate_mode,
                                fixed_masks=fixed_masks)
  return {shots: t['loss'] for shots, t in traces.items()}


def summarise_held_out(config: ml_collections.ConfigDict, traces: dict[int, np.ndarray]) -> dict:
  """``{'shots_K': {'step_k': summary}}`` of ``held_out_traces``, in the layout of ``evaluate``."""
  return {f'shots_{shots}': evaluate_lib.summarise_traces(
      t, [int(k) for k in config.eval.steps], divergence_threshold=float(config.eval.divergence_threshold),
      divergence_ratio=float(config.eval.divergence_ratio)) for shots, t in traces.items()}


@functools.partial(jax.jit, static_argnames=('hc', 'expand_units'))
def _gated_counters(params, gate_logits, hc, expand_units):
  return (1.0 - sparsity_lib.expected_density(params, gate_logits, hc, expand_units=expand_units),
          sparsity_lib.realised_sparsity(params, gate_logits, hc, expand_units=expand_units),
          sparsity_lib.nonzero_params(params, gate_logits, hc, expand_units=expand_units))


def sparsity_report(meta_params, hc: hard_concrete.HardConcrete, *, expand_units=None) -> dict:
  """Expected / realised sparsity (of the gated weights) and parameter counts of the deterministic sparse model;
  ``gate_sparsity``: the fraction of gates closed, ``hidden_unit_sparsity`` for RNN hidden-unit gates instead."""
  params, gate_logits = meta_params['params'], meta_params.get('gate_logits')
  total = masking.count_params(params)
  if gate_logits is None:
    return {'expected_sparsity': 0.0, 'realised_sparsity': 0.0, 'gated_weights': 0,
            'nonzero_params': total, 'total_params': total}
  expected, realised, nonzero = _gated_counters(params, gate_logits, hc, expand_units)
  report = {
      'expected_sparsity': float(expected),
      'realised_sparsity': float(realised),
      'gated_weights': sparsity_lib.num_gated_weights(params, gate_logits, expand_units=expand_units),
      'nonzero_params': int(nonzero),
      'total_params': total,
  }
  if (unit_sparsity := sparsity_lib.unit_sparsity(gate_logits, hc)) is not None:  # RNN hidden-unit gates.
    report['hidden_unit_sparsity'] = unit_sparsity
  else:  # The fraction of gates closed (sparsity.count='gates'): with out_unit gates, of the channels / neurons.
    report['gate_sparsity'] = float(sparsity_lib.realised_sparsity(params, gate_logits, hc, count='gates'))
  return report
