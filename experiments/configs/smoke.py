"""A tiny sinusoid run for end-to-end tests: seconds on a CPU."""

from experiments.configs import sinusoid


def get_config():
  config = sinusoid.get_config()
  config.hidden_sizes = (8, 8)
  config.meta_batch_size = 4
  config.num_outer_steps = 30
  config.eval_num_tasks = 20
  config.eval_steps = (1, 2)
  config.log_every_steps = 10
  config.checkpoint_every_steps = 20
  config.dense_reference = False
  config.sparsity_warmup_steps = 10
  return config
