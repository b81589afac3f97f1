"""5-way 1-shot character classification from Omniglot pen trajectories: ``--task=strokes``.

Data: ``strokes_background_small{1,2}.zip`` in ``config.data_dir`` (default
``../shared/data/omniglot`` beside the checkout, or ``$METAPRUNE_SHARED_DATA/omniglot``),
decoded once to 32-step ``(dx, dy, pen_up)`` sequences and cached in
``config.cache_dir``; characters split 0.7 / 0.15 / 0.15 (``split_seed``), so
meta-training and evaluation episodes never share a character. Model: a 1x128
LSTM encoder whose readout of the final hidden state is the 5-way classifier
head. Gates: one hard-concrete gate per hidden unit (``granularity='hidden_unit'``)
at a target of 93% of the gated weights, which removes ~70% of the hidden units
(a removed unit takes its gate columns, recurrent row and column and readout row
with it). ``--config.mask=none`` trains the dense net.
"""

import os

import ml_collections

from experiments.configs import sinusoid

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SHARED = os.environ.get('METAPRUNE_SHARED_DATA', os.path.join(os.path.dirname(_REPO), 'shared', 'data'))


def get_config() -> ml_collections.ConfigDict:
  config = sinusoid.get_config()
  for field in ('amplitude_range', 'phase_range', 'input_range', 'hidden_sizes', 'activation',
                'kernel_init_std'):
    del config[field]
  config.task = 'strokes'

  # Data and episodes.
  config.data_dir = os.path.join(_SHARED, 'omniglot')
  config.cache_dir = os.path.join(os.path.expanduser('~'), '.cache', 'metaprune_jax')  # '' disables.
  config.num_points = 32         # Resampled sequence length (64 costs 2x per step).
  config.split_seed = 0          # Character split (train / val / test = 0.7 / 0.15 / 0.15).
  config.eval_split = 'test'     # 'val' or 'test'.
  config.train_rotations = ()    # e.g. (90, 180, 270): rotated training characters as extra classes.
  config.ways = 5
  config.num_shots = 1           # K support drawings per class.
  config.num_query = 5           # Query drawings per class (meta-training).

  # Model.
  config.cell = 'lstm'           # 'lstm' or 'gru'.
  config.hidden_size = 128

  # Meta-learning.
  config.meta_batch_size = 8
  config.num_outer_steps = 20_000
  config.outer_lr = 1e-3
  config.grad_clip_norm = 1.0
  config.inner_lr = 0.4
  config.num_inner_steps = 1
  config.first_order = False
  config.inner_python_loop = True

  # Gates: whole hidden units.
  config.granularity = 'hidden_unit'
  config.init_logit = 2.0
  config.target_sparsity = 0.93
  config.sparsity_warmup_steps = 5000
  config.harden_at_fraction = 0.8

  # Evaluation (cross-entropy traces here; accuracy comes with the learner registry).
  config.eval_num_tasks = 600
  config.eval_shots = (1,)
  config.eval_steps = (0, 1, 5)
  config.eval_num_query = 5
  config.divergence_threshold = 1e3

  config.log_every_steps = 500
  config.checkpoint_every_steps = 2000
  config.steps_per_call = 1      # Steps take milliseconds here: dispatch is negligible.
  return config
