"""The dense 60-way ProtoNet recipe with training shifts.

Prototypical networks trained on one 60-way 1-shot episode (5 queries per class)
per meta-step, every meta-training image shifted by up to 2 pixels, 5,000
meta-steps with a cosine-decayed outer lr; evaluated at 5- and 20-way, 1- and
5-shot on 600 held-out-character episodes (5 queries per class). Dense
(``gates.mask='none'``); ``omniglot_protonet_sparse.py`` is the 80% sparse run.
Run: ``python -m experiments.maml_prune --config=experiments/configs/omniglot_protonet.py --task=omniglot``.
"""

from experiments.configs import omniglot


def get_config():
  config = omniglot.get_config()
  config.algorithm = 'protonet'
  config.task.ways = 60
  config.task.shots = 1
  config.task.queries = 5
  config.task.train_shift = 2
  config.outer.meta_batch_size = 1
  config.outer.num_outer_steps = 5000
  config.outer.outer_lr_schedule = 'cosine'
  config.gates.mask = 'none'
  config.eval.ways = (5, 20)
  config.eval.shots = (1, 5)
  config.eval.steps = (0,)           # Prototypes need no inner step.
  config.eval.num_query = 5
  config.run.log_every_steps = 250
  config.run.checkpoint_every_steps = 500
  return config
