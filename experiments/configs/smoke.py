"""A tiny sinusoid run for end-to-end tests (2x8 MLP, 30 meta-steps, 20 evaluation tasks)."""

from experiments.configs import sinusoid


def get_config():
  config = sinusoid.get_config()
  config.model.hidden_sizes = (8, 8)
  config.outer.meta_batch_size = 4
  config.outer.num_outer_steps = 30
  config.eval.num_tasks = 20
  config.eval.steps = (1, 2)
  config.eval.dense_reference = False
  config.run.log_every_steps = 10
  config.run.checkpoint_every_steps = 20
  config.sparsity.sparsity_warmup_steps = 10
  return config
