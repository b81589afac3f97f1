"""Few-shot sequence forecasting with a gated LSTM: ``python -m experiments.maml_prune --task=sequence``.

Each task is a random damped oscillator (``metaprune_jax/tasks/sequence.py``);
K=5 support windows of 20 observed steps, the net forecasts the next 10. A
1x32 LSTM (``cell='gru'`` for a GRU) reads the context and its readout of the
final hidden state is the forecast. Per-weight hard-concrete gates on the input,
recurrent and readout kernels at 90% target sparsity (``granularity=
'hidden_unit'`` gates whole hidden units, ``'weight+hidden_unit'`` both).
Sized to finish in a few minutes on a 2-core CPU, dense reference included.
"""

import ml_collections

from experiments.configs import sinusoid


def get_config() -> ml_collections.ConfigDict:
  config = sinusoid.get_config()
  for field in ('amplitude_range', 'phase_range', 'input_range', 'hidden_sizes', 'activation',
                'kernel_init_std'):
    del config[field]
  config.task = 'sequence'

  # Tasks.
  config.kind = 'oscillator'     # 'oscillator' or 'ar' (stable AR(p) processes).
  config.ar_order = 2
  config.context_length = 20     # Observed steps per window.
  config.horizon = 10            # Steps to forecast.
  config.num_shots = 5           # K support windows per task.
  config.num_query = 5

  # Model.
  config.cell = 'lstm'           # 'lstm' or 'gru'.
  config.hidden_size = 32

  # Meta-learning.
  config.meta_batch_size = 16
  config.num_outer_steps = 3000
  config.outer_lr = 3e-3
  config.grad_clip_norm = 1.0
  config.inner_lr = 0.1
  config.num_inner_steps = 1
  config.inner_python_loop = True

  # Gates.
  config.granularity = 'weight'
  config.init_logit = 2.0
  config.sparsity_warmup_steps = 1000
  config.harden_at_fraction = 0.8

  # Evaluation.
  config.eval_num_tasks = 600
  config.eval_shots = (5,)
  config.eval_steps = (0, 1, 5)
  config.eval_num_query = 20

  config.log_every_steps = 250
  config.checkpoint_every_steps = 1000
  config.steps_per_call = 1      # Steps take milliseconds here: dispatch is negligible.
  return config
