"""The Omniglot accuracy-vs-sparsity frontier on the CPU: ProtoNet Conv-4, methods x conv-weight sparsities x seeds.

Every point is a prototypical network (the default Omniglot recipe,
``omniglot.py``: Conv-4 of width 64, 2-pixel training shifts, cosine-decayed
Adam) trained on 5-way 1-shot episodes (5 queries per class; a 20-way episode
costs ~8x the time on one core) for a short, equal budget of
``outer.num_outer_steps`` meta-steps, and evaluated on 600 5-way 1-shot
episodes (5 queries per class) of the **validation** characters; the reported
metric is the per-episode query accuracy (higher is better). The test
characters are read once per final recipe, through ``python -m
experiments.evaluate``.

Sparsity is the fraction of zero **conv** weights: the head stays dense (a
ProtoNet never uses it) for the gates (``gates.dense_layers``) and for every
baseline alike. Hard-concrete gates ramp their target over the first 20% of
the budget and are hardened at 60% (the schedule of ``omniglot.py``, scaled
with the budget); the baselines prune layer-wise with ERK densities.

Channel-level points (one gate per conv filter against L1 filter pruning; the
other baselines prune single weights only), in a workdir of their own::

  python -m experiments.frontier --task=omniglot --workdir=runs/frontier_omniglot_channels \\
    --config.gates.granularity=out_unit --config.frontier.sparsities="(0.5,0.75)" \\
    --config.frontier.methods="('hard_concrete','filter_finetune')"

Add ``--config.sparsity.count=gates --config.sparsity.harden_scope=layerwise`` to make the gates' target a
fraction of channels and harden every layer to it (the same widths as filter pruning; what export latency follows).

Run: ``python -m experiments.frontier --task=omniglot --workdir=runs/frontier_omniglot``; the accelerator
budget is ``frontier_omniglot_full.py``.
"""

import ml_collections

from experiments.configs import omniglot


def get_config():
  config = omniglot.get_config()
  config.task.ways = 5
  config.task.queries = 5
  config.outer.num_outer_steps = 1_000
  # Follows --config.outer.num_outer_steps unless set itself.
  config.sparsity.sparsity_warmup_steps = config.outer.get_ref('num_outer_steps') * 2 // 10
  config.sparsity.harden_at_fraction = 0.6
  # A fast dual ascent: at omniglot.py's 0.02 the multiplier needs thousands of steps to outweigh the task loss on
  # 111k gates (expected sparsity 0.06 of 0.9 at hardening; 84.9% 5-way 1-shot at 90%); at 1.0 / 5.0 it reaches
  # 0.71 / 0.95 (90.0% / 90.2%; seed 0, validation).
  config.sparsity.dual_lr = 5.0
  config.run.log_every_steps = 100
  config.run.checkpoint_every_steps = 1_000
  config.run.keep_checkpoints = 1
  config.run.tensorboard = False

  # Evaluation: 600 5-way 1-shot episodes of the validation characters; prototypes need no inner step.
  config.eval.split = 'validation'
  config.eval.ways = (5,)
  config.eval.shots = (1,)
  config.eval.steps = (0,)
  config.eval.num_tasks = 600
  config.eval.chunk_size = 2  # Small chunks run fastest on one CPU core.
  config.eval.dense_reference = False  # The frontier runs 'dense' as a method of its own.

  # Baselines (experiments/baselines.py): layer-wise ERK, the gates' layers only; gradual pruning recomputes
  # its masks every 25 meta-steps between 10% and 75% of the budget.
  config.pruning.prune_scope = 'layerwise'
  config.pruning.prune_distribution = 'erk'
  config.pruning.snip_num_tasks = 32
  config.pruning.gradual_update_every_steps = 25

  # The grid.
  config.frontier = ml_collections.ConfigDict(dict(
      methods=('dense', 'hard_concrete', 'magnitude_finetune', 'gradual_magnitude', 'snip', 'random'),
      sparsities=(0.5, 0.8, 0.9, 0.95),
      seeds=(0, 1, 2),
      metric='accuracy',  # The reported per-task metric: 'accuracy' (higher is better) or 'loss'.
  ))
  return config
