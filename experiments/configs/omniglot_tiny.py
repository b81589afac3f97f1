"""A tiny Omniglot run for end-to-end tests: 2 characters per alphabet, 16x16 images, Conv-2 of width 8."""

from experiments.configs import omniglot


def get_config():
  config = omniglot.get_config()
  config.max_characters_per_alphabet = 2   # 16 characters.
  config.split_sizes = (10, 2, 4)
  config.cache_dir = ''
  config.image_size = 16
  config.conv_width = 8
  config.conv_depth = 2
  config.ways = 3
  config.queries = 2
  config.meta_batch_size = 2
  config.num_outer_steps = 6
  config.sparsity_warmup_steps = 2
  config.eval_num_tasks = 4
  config.eval_ways = (3,)
  config.eval_shots = (1,)
  config.eval_steps = (0, 1)
  config.eval_num_query = 3
  config.log_every_steps = 3
  config.checkpoint_every_steps = 3
  return config
