"""5-way 1-shot second-order MAML at 80% conv-weight sparsity, 6,000 meta-steps: the MAML-family recipe.

Second-order MAML, meta-batch 32, one inner step; a cosine-decayed outer lr;
gates ramp to 80% over 1,500 meta-steps and are hardened at 70% of the run.
Evaluated 5-way 1-shot on 600 held-out-character episodes (5 queries per class)
after 0, 1 and 3 inner steps. The other rows of that table:

* dense: ``--config.gates.mask=none``;
* first-order MAML: ``--config.algorithm=fomaml --config.inner.num_inner_steps=3``;
* ANIL: ``--config.algorithm=anil --config.inner.num_inner_steps=5 --config.eval.steps="(0,1,5)"``.

Those runs also passed ``--config.run.tensorboard=false`` (no effect on the numbers).
Run: ``python -m experiments.maml_prune --config=experiments/configs/omniglot_maml.py --task=omniglot``.
"""

from experiments.configs import omniglot


def get_config():
  config = omniglot.get_config()
  config.algorithm = 'maml'
  config.task.ways = 5
  config.task.shots = 1
  config.task.queries = 5
  config.task.train_shift = 0
  config.outer.meta_batch_size = 32
  config.outer.num_outer_steps = 6000
  config.outer.outer_lr_schedule = 'cosine'
  config.inner.num_inner_steps = 1
  config.gates.mask = 'hard_concrete'
  config.gates.gate_lr = 0.05
  config.gates.init_logit = 2.0
  config.sparsity.target_sparsity = 0.8
  config.sparsity.sparsity_warmup_steps = 1500
  config.sparsity.harden_at_fraction = 0.7
  config.sparsity.dual_lr = 0.1
  config.eval.ways = (5,)
  config.eval.shots = (1,)
  config.eval.steps = (0, 1, 3)
  config.eval.chunk_size = 8
  config.eval.num_query = 5
  config.run.log_every_steps = 500
  config.run.checkpoint_every_steps = 6000
  return config
