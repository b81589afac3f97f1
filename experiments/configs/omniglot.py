"""Few-shot Omniglot with a gated Conv-4: the CPU recipe, chosen on validation characters.

``python -m experiments.maml_prune --task=omniglot`` meta-trains a prototypical
network (Snell et al. 2017) on 20-way 1-shot episodes (5 queries per class,
every meta-training image shifted by up to 2 pixels) with hard-concrete gates on
the conv weights: the target ramps to 80% over 400 meta-steps, a slow dual
ascent keeps the expected sparsity from overshooting, and at 60% of the 2,000
meta-steps the gates are hardened to exactly 80% and the weights fine-tuned under
the fixed mask. It is evaluated on 600 episodes of the **validation**
characters (5- and 20-way, 1- and 5-shot, 5 queries per class); the test
characters are read once per final recipe, by
``python -m experiments.evaluate --workdir=RUN --split=test``. Expected accuracy
and wall time: README.md. Other learners: ``--config.algorithm=maml`` (or fomaml,
anil, metasgd, reptile; the MAML recipe is ``omniglot_maml.py``),
``--config.gates.mask=none`` trains dense.

Data: the published ``images_*.zip`` archives (or their extracted folders) in
``task.data_dir``, by default ``../shared/data/omniglot`` beside the repository
(background_small1 + small2: 242 characters x 20 drawers, 8 alphabets; not the
1,623-character splits of published tables). Characters are split into
meta-train / meta-validation / meta-test = 172 / 28 / 42 (``task.split_seed=0``;
the 42 test characters are those of the former 200 / 0 / 42 split, which had no
validation characters; ``task.split_by='alphabet'`` keeps whole alphabets
apart); 90/180/270-degree rotations are added as extra classes after the split.
``task.data_source='tfds'`` reads tensorflow-datasets ArrayRecord files instead
(see ``metaprune_jax/data/omniglot.py`` for what that needs).
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
      split_sizes=(172, 28, 42),  # (train, validation, test) units: counts (ints) or fractions (floats).
      split_seed=0,
      rotations=(90, 180, 270),
      max_characters_per_alphabet=0,  # > 0: keep only the first N per alphabet (tests).
      # Episodes (meta-training).
      ways=20,
      shots=1,
      queries=5,                 # Query images per class.
      train_shift=2,             # > 0: shift each meta-training image by up to this many pixels (augmentation).
  ))
  model = ml_collections.ConfigDict(dict(conv_width=64, conv_depth=4))  # Conv-4.
  inner = base.inner(inner_lr=0.4, num_inner_steps=1)  # The MAML family's (prototypes need no inner step).
  return base.config(
      task, model,
      algorithm='protonet',
      # Batch norm on a query set: 'transductive' (an episode's query images normalised together, as the reference
      # MAML code does) or 'inductive' (with the support set's statistics: no query image affects another's output).
      bn_mode='transductive',
      outer=base.outer(meta_batch_size=1, num_outer_steps=2_000, outer_lr=1e-3, outer_lr_schedule='cosine',
                       outer_lr_final_scale=0.0, inner_lrs_lr=1e-3),
      inner=inner,
      # Conv kernels only (the head stays dense; batch-norm parameters are never gated). gates.mask=meta_pruner:
      # task-conditioned gates from the support images' (stop-gradient) Conv-4 features.
      gates=base.gates(granularity='weight', dense_layers=('head',), init_logit=2.0, gate_lr=0.05,
                       meta_pruner_hidden_sizes=(64,), meta_pruner_embed_dim=16, meta_pruner_lr=1e-3),
      sparsity=base.sparsity(target_sparsity=0.8, sparsity_warmup_steps=400, dual_lr=0.02, harden_at_fraction=0.6),
      # eval.split: 'validation' (recipe choices) or 'test' (once per final recipe); eval.num_query: per class.
      eval=base.eval_section(inner, ways=(5, 20), shots=(1, 5), steps=(0,), num_query=5, chunk_size=8,
                             split='validation', dense_reference=False),
      execution=base.execution(convs=True, python_loop=True),
      run=base.run(log_every_steps=100, checkpoint_every_steps=500, steps_per_call=1),
  )
