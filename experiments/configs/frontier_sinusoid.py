"""The sinusoid accuracy-vs-sparsity frontier: methods x sparsities x seeds.

Every point keeps the training settings of ``sinusoid.py`` (2x40 ReLU, meta-batch
25, K=10, one second-order inner step) with a shorter, equal budget of
``num_outer_steps`` meta-steps per point, and is evaluated on 600 held-out
5-shot tasks after 1 and 10 inner steps. The hard-concrete target ramp is scaled
with the budget (20,000 of 70,000 steps in the tuned default).
Run: ``python -m experiments.frontier --task=sinusoid --workdir=runs/frontier_sinusoid``.
"""

from experiments.configs import sinusoid

_TUNED_STEPS, _TUNED_WARMUP = 70_000, 20_000


def get_config():
  config = sinusoid.get_config()
  # The frontier was measured with the paper's training settings (K=10, one inner step, lax.scan inner
  # loop); the default run's settings (K=5, two inner steps) changed after it.
  config.num_shots = 10
  config.num_inner_steps = 1
  config.inner_python_loop = False
  config.num_outer_steps = 30_000
  # Follows --config.num_outer_steps unless set itself.
  config.sparsity_warmup_steps = config.get_ref('num_outer_steps') * _TUNED_WARMUP // _TUNED_STEPS

  # Evaluation: 5-shot held-out tasks, 1 and 10 inner steps.
  config.eval_shots = (5,)
  config.eval_steps = (1, 10)
  config.dense_reference = False  # The frontier runs 'dense' as a method of its own.
  config.log_every_steps = 5_000
  config.checkpoint_every_steps = 10_000
  config.keep_checkpoints = 1

  # Baselines (experiments/baselines.py).
  # Layerwise ERK (small first / last layers kept denser): at 90% and 8k steps it beat global top-k for
  # magnitude pruning (MSE 1.47 vs 2.69 after 10 steps) and random pruning (0.89 vs 4.29); see the report.
  config.prune_scope = 'layerwise'         # 'global' or 'layerwise' top-k.
  config.prune_distribution = 'erk'        # 'uniform' or 'erk' per-layer sparsities (layerwise only).
  config.finetune_dense_fraction = 0.5     # magnitude_finetune: dense share of the budget.
  config.snip_num_tasks = 100              # snip: tasks in the meta-loss batch at initialisation.
  config.gradual_begin_fraction = 0.1      # gradual_magnitude: schedule start ...
  config.gradual_end_fraction = 0.75       # ... and the step (share of budget) where the target holds.
  config.gradual_update_every_steps = 500  # Mask recomputed every this many meta-steps.

  # The grid.
  config.frontier_methods = ('dense', 'hard_concrete', 'meta_pruner', 'magnitude_finetune', 'snip',
                             'gradual_magnitude', 'random')
  config.frontier_sparsities = (0.5, 0.8, 0.9, 0.95, 0.98)
  config.frontier_seeds = (0, 1, 2)
  return config
