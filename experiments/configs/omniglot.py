"""Few-shot Omniglot with a gated Conv-4 (Finn et al. 2017 / Snell et al. 2017 settings).

``python -m experiments.maml_prune --task=omniglot --config.ways=5 --config.shots=1``
meta-trains second-order MAML with hard-concrete gates at 80% target sparsity of
the conv weights; ``--config.algorithm=protonet`` (or fomaml, anil, metasgd,
reptile) picks another learner, ``--config.mask=none`` trains dense.

Data: the published ``images_*.zip`` archives (or their extracted folders) in
``data_dir``, by default ``../shared/data/omniglot`` beside the repository
(background_small1 + small2: 242 characters x 20 drawers). Characters are split
into meta-train / meta-validation / meta-test (``split_by='alphabet'`` keeps
whole alphabets apart); 90/180/270-degree rotations are added as extra classes
after the split. ``data_source='tfds'`` reads tensorflow-datasets ArrayRecord
files instead (see ``metaprune_jax/data/omniglot.py`` for what that needs).
"""

import os

import ml_collections

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DATA_DIR = os.path.join(os.path.dirname(_REPO), 'shared', 'data', 'omniglot')


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = 'omniglot'
  config.seed = 0

  # Data.
  config.data_source = 'files'   # 'files' (published zips / folders) or 'tfds'.
  config.data_dir = DEFAULT_DATA_DIR
  config.tfds_data_dir = ''      # data_source='tfds': the tfds data_dir ('' = ~/tensorflow_datasets).
  config.cache_dir = os.path.join(os.path.expanduser('~'), '.cache', 'metaprune_jax')  # '' disables the cache.
  config.image_size = 28
  config.split_by = 'character'  # 'character' or 'alphabet'.
  config.split_sizes = (200, 0, 42)  # (train, validation, test) units: counts (ints) or fractions (floats).
  config.split_seed = 0
  config.rotations = (90, 180, 270)
  config.max_characters_per_alphabet = 0  # > 0: keep only the first N per alphabet (tests).
  config.eval_split = 'test'     # 'test' or 'validation'.

  # Episodes (meta-training).
  config.ways = 5
  config.shots = 1
  config.queries = 5             # Query images per class.
  config.num_shots = config.get_ref('shots')    # Aliases read by the generic validation.
  config.num_query = config.get_ref('queries')
  config.train_shift = 0         # > 0: shift each meta-training image by up to this many pixels (augmentation).

  # Model: Conv-4.
  config.conv_width = 64
  config.conv_depth = 4
  config.conv_method = 'auto'    # 'auto' (problems.conv_method), 'patches' (im2col + batched matmul) or 'conv'.

  # Meta-learning.
  config.algorithm = 'maml'      # maml, fomaml, anil, metasgd, reptile, protonet.
  config.first_order = False
  config.meta_batch_size = 32
  config.num_outer_steps = 20_000
  config.outer_lr = 1e-3
  config.outer_lr_schedule = 'constant'  # 'constant' or 'cosine' (decays to outer_lr_final_scale * outer_lr).
  config.outer_lr_final_scale = 0.0
  config.grad_clip_norm = 0.0
  config.inner_lr = 0.4
  config.num_inner_steps = 1
  config.inner_python_loop = True
  config.task_chunk_size = 0     # > 0: lax.map over chunks of this many vmapped tasks (memory / speed).
  config.inner_lrs_lr = 1e-3     # Meta-SGD: Adam step size on the learned inner learning rates.

  # Gates: conv kernels only (the head stays dense; batch-norm parameters are never gated).
  config.mask = 'hard_concrete'
  # --config.mask=meta_pruner: task-conditioned gates from the support images' (stop-gradient) Conv-4 features.
  config.meta_pruner_hidden_sizes = (64,)
  config.meta_pruner_embed_dim = 16
  config.meta_pruner_lr = 1e-3
  config.granularity = 'weight'  # 'weight' or 'out_unit' (one gate per output channel / filter).
  config.dense_layers = ('head',)
  config.init_logit = 3.0
  config.gate_lr = 1e-2
  config.hc_beta = 2.0 / 3.0
  config.hc_gamma = -0.1
  config.hc_zeta = 1.1
  config.gate_noise = 'hash'
  config.gate_sample_scope = 'task'
  config.adapt_gates = False
  config.inner_gate_lr = 0.1

  # Sparsity objective.
  config.sparsity_mode = 'target'
  config.target_sparsity = 0.8
  config.sparsity_penalty = 0.0
  config.loss_budget = 0.5
  config.dual_lr = 0.1
  config.sparsity_warmup_steps = 5_000
  config.sparsity_quadratic = 0.0
  config.harden_at_fraction = 0.8
  config.init_multiplier = 0.0

  # Evaluation on held-out characters.
  config.eval_num_tasks = 600
  config.eval_ways = (5, 20)
  config.eval_shots = (1, 5)
  config.eval_steps = (0, 1, 3)
  config.eval_num_query = 15     # Query images per class.
  config.eval_inner_lr = config.get_ref('inner_lr')
  config.eval_chunk_size = 8     # Tasks per jitted evaluation call (memory).
  config.divergence_threshold = 1e3
  config.divergence_ratio = 10.0
  config.dense_reference = False

  # Logging and checkpoints.
  config.log_every_steps = 100
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 3
  config.tensorboard = True      # Event files in workdir/tensorboard (needs tensorboardX).

  # Run machinery (experiments/ops_config.py).
  config.num_devices = 1         # Shard the task batch over this many devices; 0 = all that help (GPU/TPU).
  config.distributed = False     # jax.distributed.initialize() first (multi-host).
  config.nonfinite = 'stop'      # Non-finite loss/gradients: 'stop' the run or 'skip' the update.
  config.steps_per_call = 1      # Meta-steps per jitted call (lax.scan).
  return config
