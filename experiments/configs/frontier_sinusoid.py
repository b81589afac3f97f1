"""The sinusoid accuracy-vs-sparsity frontier: methods x sparsities x seeds.

Every point keeps the training settings of ``sinusoid.py`` (2x40 ReLU, meta-batch
25) with the paper's K=10 and one inner step, a shorter, equal budget of
``outer.num_outer_steps`` meta-steps per point, and is evaluated on 600 held-out
5-shot tasks after 1 and 10 inner steps. The hard-concrete target ramp is scaled
with the budget (20,000 of 70,000 steps in the tuned default).
Run: ``python -m experiments.frontier --task=sinusoid --workdir=runs/frontier_sinusoid``.
"""

import ml_collections

from experiments.configs import sinusoid

_TUNED_STEPS, _TUNED_WARMUP = 70_000, 20_000


def get_config():
  config = sinusoid.get_config()
  # The frontier was measured with the paper's training settings (K=10, one inner step, lax.scan inner
  # loop); the default run's settings (K=5, two inner steps) changed after it.
  config.task.num_shots = 10
  config.inner.num_inner_steps = 1
  config.execution.python_loop = False
  config.outer.num_outer_steps = 30_000
  # Follows --config.outer.num_outer_steps unless set itself.
  config.sparsity.sparsity_warmup_steps = (config.outer.get_ref('num_outer_steps') * _TUNED_WARMUP
                                           // _TUNED_STEPS)

  # Evaluation: 5-shot held-out tasks, 1 and 10 inner steps.
  config.eval.shots = (5,)
  config.eval.steps = (1, 10)
  config.eval.dense_reference = False  # The frontier runs 'dense' as a method of its own.
  config.run.log_every_steps = 5_000
  config.run.checkpoint_every_steps = 10_000
  config.run.keep_checkpoints = 1

  # Baselines (experiments/baselines.py). Layerwise ERK (small first / last layers kept denser) beat global
  # top-k for magnitude and random pruning at 90%.
  config.pruning.prune_scope = 'layerwise'
  config.pruning.prune_distribution = 'erk'

  # The grid.
  config.frontier = ml_collections.ConfigDict(dict(
      methods=('dense', 'hard_concrete', 'meta_pruner', 'magnitude_finetune', 'snip', 'gradual_magnitude',
               'random'),
      sparsities=(0.5, 0.8, 0.9, 0.95, 0.98),
      seeds=(0, 1, 2),
  ))
  return config
