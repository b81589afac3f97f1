"""Few-shot sequence forecasting with a gated LSTM: ``python -m experiments.maml_prune --task=sequence``.

Each task is a random damped oscillator (``metaprune_jax/tasks/sequence.py``);
K=5 support windows of 20 observed steps, the net forecasts the next 10. A
1x32 LSTM (``model.cell='gru'`` for a GRU) reads the context and its readout of
the final hidden state is the forecast. Per-weight hard-concrete gates on the
input, recurrent and readout kernels at 90% target sparsity
(``gates.granularity='hidden_unit'`` gates whole hidden units,
``'weight+hidden_unit'`` both). A dense reference with the same budget is trained too.
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
  task = ml_collections.ConfigDict(dict(
      name='sequence',
      kind='oscillator',       # 'oscillator' or 'ar' (stable AR(p) processes).
      ar_order=2,
      context_length=20,       # Observed steps per window.
      horizon=10,              # Steps to forecast.
      num_shots=5,             # K support windows per task.
      num_query=5,
  ))
  model = ml_collections.ConfigDict(dict(
      cell='lstm',             # 'lstm' or 'gru'.
      hidden_size=32,
  ))
  inner = base.inner(inner_lr=0.1, num_inner_steps=1)
  return base.config(
      task, model,
      outer=base.outer(meta_batch_size=16, num_outer_steps=3000, outer_lr=3e-3, grad_clip_norm=1.0),
      inner=inner,
      gates=base.gates(granularity='weight', init_logit=2.0),
      sparsity=base.sparsity(target_sparsity=0.9, sparsity_warmup_steps=1000, harden_at_fraction=0.8),
      eval=base.eval_section(inner, shots=(5,), steps=(0, 1, 5), num_query=20, dense_reference=True),
      execution=base.execution(python_loop=True),
      run=base.run(log_every_steps=250, checkpoint_every_steps=1000, steps_per_call=1),
  )
