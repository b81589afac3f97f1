"""A tiny Omniglot run for end-to-end tests: 2 characters per alphabet, 16x16 images, Conv-2 of width 8."""

from experiments.configs import omniglot


def get_config():
  config = omniglot.get_config()
  # Second-order MAML with the gate settings the tiny tests were written for (not the default ProtoNet recipe).
  config.algorithm = 'maml'
  config.task.train_shift = 0
  config.outer.outer_lr_schedule = 'constant'
  config.gates.init_logit = 3.0
  config.gates.gate_lr = 1e-2
  config.sparsity.dual_lr = 0.1
  config.sparsity.harden_at_fraction = 0.8
  config.eval.split = 'test'
  config.task.max_characters_per_alphabet = 2   # 16 characters.
  config.task.split_sizes = (10, 2, 4)
  config.task.cache_dir = ''
  config.task.image_size = 16
  config.task.ways = 3
  config.task.queries = 2
  config.model.conv_width = 8
  config.model.conv_depth = 2
  config.outer.meta_batch_size = 2
  config.outer.num_outer_steps = 6
  config.sparsity.sparsity_warmup_steps = 2
  config.eval.num_tasks = 4
  config.eval.ways = (3,)
  config.eval.shots = (1,)
  config.eval.steps = (0, 1)
  config.eval.num_query = 3
  config.run.log_every_steps = 3
  config.run.checkpoint_every_steps = 3
  return config
