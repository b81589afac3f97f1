"""5-way 1-shot character classification from Omniglot pen trajectories: ``--task=strokes``.

Data: ``strokes_background_small{1,2}.zip`` in ``task.data_dir`` (default
``../shared/data/omniglot`` beside the checkout, or ``$METAPRUNE_SHARED_DATA/omniglot``),
decoded once to 32-step ``(dx, dy, pen_up)`` sequences and cached in
``task.cache_dir``; characters split 0.7 / 0.15 / 0.15 (``task.split_seed``), so
meta-training and evaluation episodes never share a character. Model: a 1x128
LSTM encoder whose readout of the final hidden state is the 5-way classifier
head. Gates: one hard-concrete gate per hidden unit (``gates.granularity='hidden_unit'``)
at a target of 93% of the gated weights, which removes ~70% of the hidden units
(a removed unit takes its gate columns, recurrent row and column and readout row
with it). ``--config.gates.mask=none`` trains the dense net.
"""

import os

import ml_collections

from experiments.configs import base

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SHARED = os.environ.get('METAPRUNE_SHARED_DATA', os.path.join(os.path.dirname(_REPO), 'shared', 'data'))


def get_config() -> ml_collections.ConfigDict:
  task = ml_collections.ConfigDict(dict(
      name='strokes',
      data_dir=os.path.join(_SHARED, 'omniglot'),
      cache_dir=os.path.join(os.path.expanduser('~'), '.cache', 'metaprune_jax'),  # '' disables the cache.
      num_points=32,           # Resampled sequence length (steps per drawing).
      split_seed=0,            # Character split (train / val / test = 0.7 / 0.15 / 0.15).
      train_rotations=(),      # e.g. (90, 180, 270): rotated training characters as extra classes.
      ways=5,
      num_shots=1,             # K support drawings per class.
      num_query=5,             # Query drawings per class (meta-training).
  ))
  model = ml_collections.ConfigDict(dict(
      cell='lstm',             # 'lstm' or 'gru'.
      hidden_size=128,
  ))
  inner = base.inner(inner_lr=0.4, num_inner_steps=1, first_order=False)
  return base.config(
      task, model,
      outer=base.outer(meta_batch_size=8, num_outer_steps=20_000, outer_lr=1e-3, grad_clip_norm=1.0),
      inner=inner,
      gates=base.gates(granularity='hidden_unit', init_logit=2.0),   # Whole hidden units.
      sparsity=base.sparsity(target_sparsity=0.93, sparsity_warmup_steps=5000, harden_at_fraction=0.8),
      # eval.split: 'validation' (recipe choices) or 'test' (once per final recipe: experiments.evaluate --split=test).
      eval=base.eval_section(inner, shots=(1,), steps=(0, 1, 5), num_query=5, split='validation',
                             divergence_threshold=1e3, dense_reference=True),
      execution=base.execution(python_loop=True),
      run=base.run(log_every_steps=500, checkpoint_every_steps=2000, steps_per_call=1),
  )
