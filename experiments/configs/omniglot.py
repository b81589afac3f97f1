"""Few-shot Omniglot with a gated Conv-4 (Finn et al. 2017 / Snell et al. 2017 settings).

``python -m experiments.maml_prune --task=omniglot --config.task.ways=5 --config.task.shots=1``
meta-trains second-order MAML with hard-concrete gates at 80% target sparsity of
the conv weights; ``--config.algorithm=protonet`` (or fomaml, anil, metasgd,
reptile) picks another learner, ``--config.gates.mask=none`` trains dense.

Data: the published ``images_*.zip`` archives (or their extracted folders) in
``task.data_dir``, by default ``../shared/data/omniglot`` beside the repository
(background_small1 + small2: 242 characters x 20 drawers). Characters are split
into meta-train / meta-validation / meta-test (``task.split_by='alphabet'`` keeps
whole alphabets apart); 90/180/270-degree rotations are added as extra classes
after the split. ``task.data_source='tfds'`` reads tensorflow-datasets ArrayRecord
files instead (see ``metaprune_jax/data/omniglot.py`` for what that needs).
Recipes: ``omniglot_protonet.py``, ``omniglot_protonet_sparse.py``, ``omniglot_maml.py``.
"""

import os

import ml_collections

from experiments.configs import base

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DATA_DIR = os.path.join(os.path.dirname(_REPO), 'shared', 'data', 'omniglot')


def get_config() -> ml_collections.ConfigDict:
  task = ml_collections.ConfigDict(dict(
      name='omniglot',
      data_source='files',       # 'files' (published zips / folders) or 'tfds'.
      data_dir=DEFAULT_DATA_DIR,
      tfds_data_dir='',          # data_source='tfds': the tfds data_dir ('' = ~/tensorflow_datasets).
      cache_dir=os.path.join(os.path.expanduser('~'), '.cache', 'metaprune_jax'),  # '' disables the cache.
      image_size=28,
      split_by='character',      # 'character' or 'alphabet'.
      split_sizes=(200, 0, 42),  # (train, validation, test) units: counts (ints) or fractions (floats).
      split_seed=0,
      rotations=(90, 180, 270),
      max_characters_per_alphabet=0,  # > 0: keep only the first N per alphabet (tests).
      # Episodes (meta-training).
      ways=5,
      shots=1,
      queries=5,                 # Query images per class.
      train_shift=0,             # > 0: shift each meta-training image by up to this many pixels (augmentation).
  ))
  model = ml_collections.ConfigDict(dict(conv_width=64, conv_depth=4))  # Conv-4.
  inner = base.inner(inner_lr=0.4, num_inner_steps=1)
  return base.config(
      task, model,
      algorithm='maml',
      outer=base.outer(meta_batch_size=32, num_outer_steps=20_000, outer_lr=1e-3, outer_lr_final_scale=0.0,
                       inner_lrs_lr=1e-3),
      inner=inner,
      # Conv kernels only (the head stays dense; batch-norm parameters are never gated). gates.mask=meta_pruner:
      # task-conditioned gates from the support images' (stop-gradient) Conv-4 features.
      gates=base.gates(granularity='weight', dense_layers=('head',), init_logit=3.0, gate_lr=1e-2,
                       meta_pruner_hidden_sizes=(64,), meta_pruner_embed_dim=16, meta_pruner_lr=1e-3),
      sparsity=base.sparsity(target_sparsity=0.8, sparsity_warmup_steps=5_000),
      # Held-out characters; eval.split: 'test' or 'validation'; eval.num_query: query images per class.
      eval=base.eval_section(inner, ways=(5, 20), shots=(1, 5), steps=(0, 1, 3), num_query=15, chunk_size=8,
                             split='test', dense_reference=False),
      execution=base.execution(convs=True, python_loop=True),
      run=base.run(log_every_steps=100, checkpoint_every_steps=500, steps_per_call=1),
  )
