"""The 60-way ProtoNet recipe at 80% conv-weight sparsity.

``omniglot_protonet.py`` with hard-concrete gates: the target ramps up over
1,000 meta-steps, a slow dual ascent (``dual_lr=0.02``) keeps the expected
sparsity from overshooting, and at 60% of the 5,000 meta-steps the gates are
hardened to exactly 80% and the weights fine-tuned under the fixed mask.
Run: ``python -m experiments.maml_prune --config=experiments/configs/omniglot_protonet_sparse.py --task=omniglot``.
"""

from experiments.configs import omniglot_protonet


def get_config():
  config = omniglot_protonet.get_config()
  config.gates.mask = 'hard_concrete'
  config.gates.gate_lr = 0.05
  config.gates.init_logit = 2.0
  config.sparsity.target_sparsity = 0.8
  config.sparsity.sparsity_warmup_steps = 1000
  config.sparsity.dual_lr = 0.02
  config.sparsity.harden_at_fraction = 0.6
  config.outer.num_outer_steps = 5000
  return config
