"""The 60-way ProtoNet recipe with one gate per conv channel: 50% of channels removed.

``omniglot_protonet_sparse.py`` with ``gates.granularity='out_unit'``: one
hard-concrete gate per conv filter (the head stays dense), hardened to exactly
50% of the gated conv weights, i.e. half of the filters of equal size. A closed
filter removes its output channel and the matching input channels of the next
layer, so ``python -m experiments.export`` writes a physically smaller Conv-4.
``--config.sparsity.target_sparsity=0.75`` removes three quarters.
Run: ``python -m experiments.maml_prune --task=omniglot --config=experiments/configs/omniglot_protonet_channels.py``.
"""

from experiments.configs import omniglot_protonet_sparse


def get_config():
  config = omniglot_protonet_sparse.get_config()
  config.gates.granularity = 'out_unit'
  config.sparsity.target_sparsity = 0.5
  return config
