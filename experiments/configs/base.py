"""Shared config sections: one function per section, composed and overridden by the task configs.

A task config is ``seed``, ``algorithm`` and the sections ``task``, ``model``,
``outer``, ``inner``, ``gates``, ``sparsity``, ``eval``, ``execution``, ``run``,
``pruning`` and ``distill`` (plus ``frontier`` in ``frontier_*.py``). Every function here
returns a fresh ``ConfigDict`` with the defaults; keyword arguments override
them (an unknown keyword is an error, so a typo cannot add a field)::

    config.outer = base.outer(meta_batch_size=32, num_outer_steps=20_000)

Override from the command line with ``--config.SECTION.FIELD=VALUE``.
"""

import ml_collections


def section(defaults: dict, overrides: dict, name: str) -> ml_collections.ConfigDict:
  """``defaults`` updated by ``overrides`` as a ConfigDict; unknown override keys raise a KeyError."""
  unknown = sorted(set(overrides) - set(defaults))
  if unknown:
    raise KeyError(f'{name}() has no field(s) {unknown}; valid: {sorted(defaults)}.')
  return ml_collections.ConfigDict({**defaults, **overrides})


def outer(**overrides) -> ml_collections.ConfigDict:
  """The outer (meta) optimisation: Adam on the meta-parameters."""
  return section(dict(
      meta_batch_size=25,
      num_outer_steps=10_000,
      outer_lr=1e-3,
      # 'constant' or 'cosine' (decays the weights' outer lr to outer_lr_final_scale * outer_lr over the run;
      # gate logits keep gates.gate_lr).
      outer_lr_schedule='constant',
      outer_lr_final_scale=0.05,
      grad_clip_norm=0.0,   # 0 disables clipping.
      inner_lrs_lr=1e-3,    # Meta-SGD: Adam step size on the learned inner learning rates.
      # algorithm=reptile: the weights' outer update (meta/reptile.py). 'adam': Adam at outer_lr on the Reptile
      # direction theta - mean(adapted). 'interpolate' (Nichol et al. 2018): theta + eps_t (mean(adapted) - theta),
      # plain SGD with eps_t annealed linearly from reptile_step_size to reptile_step_size_final over
      # num_outer_steps; outer_lr, outer_lr_schedule and grad_clip_norm then apply to the gate logits etc. only.
      reptile_update='adam',
      reptile_step_size=1.0,
      reptile_step_size_final=0.0,
  ), overrides, 'outer')


def inner(**overrides) -> ml_collections.ConfigDict:
  """The inner loop: SGD adaptation on each task's support set."""
  return section(dict(
      inner_lr=0.01,
      num_inner_steps=1,
      first_order=False,    # True: first-order MAML (no second-order terms).
      adapt_gates=False,    # Also adapt gate logits in the inner loop ...
      inner_gate_lr=0.1,    # ... at this learning rate.
  ), overrides, 'inner')


def gates(**overrides) -> ml_collections.ConfigDict:
  """Hard-concrete L0 gates (Louizos et al. 2018) or the task-conditioned meta-pruner."""
  return section(dict(
      # 'hard_concrete' (shared gates), 'meta_pruner' (task-conditioned gates: a network maps each task's support
      # set and the weights' magnitudes to its own gate logits; metaprune_jax/meta/meta_pruner.py) or 'none' (dense).
      mask='hard_concrete',
      granularity='weight',   # 'weight', 'out_unit' (neurons), 'in_unit'; RNNs also 'hidden_unit'.
      dense_layers=(),        # Module names left ungated, e.g. ('Dense_2',).
      init_logit=1.0,         # log_alpha at init (1.0: P(gate != 0) = 0.93).
      gate_lr=1e-2,           # Adam step size on the gate logits.
      hc_beta=2.0 / 3.0,      # Hard-concrete temperature ...
      hc_gamma=-0.1,          # ... and stretch interval (gamma, zeta).
      hc_zeta=1.1,
      meta_pruner_hidden_sizes=(64, 64),  # phi, the meta-pruner's per-example embedding network.
      meta_pruner_embed_dim=32,           # Width of the task embedding.
      meta_pruner_lr=1e-3,                # Adam step size on the meta-pruner's parameters.
      # Task encoder: 'normalized' (backbone features layer-normalised per example, layer norm of the mean phi) or
      # 'tanh' (tanh of the mean phi: saturates on un-normalised backbone features; runs saved before this field
      # existed used it, config_check.PREDATING); meta_pruner.EMBEDDINGS.
      meta_pruner_embedding='normalized',
      # Fixed multiplier g of the task modulation of the logits: under Adam the modulation then moves at g times
      # meta_pruner_lr in logit units (meta_pruner.py). Runs saved before this field had 1.0 (config_check.PREDATING).
      # Omniglot: g=10 doubles the task masks' distance; sinusoid: g=10 is worse than 1 (docs/notes/meta_pruner.md).
      meta_pruner_modulation_gain=1.0,
  ), overrides, 'gates')


def sparsity(**overrides) -> ml_collections.ConfigDict:
  """The sparsity objective over the expected density rho = E||m||_0 / N."""
  return section(dict(
      sparsity_mode='target',      # 'target' (dual ascent), 'penalty' or 'budget'.
      target_sparsity=0.9,
      # What a sparsity counts: 'weights' (every weight a gate switches) or 'gates' (each gate once: with
      # gates.granularity='out_unit', the fraction of neurons / conv channels removed; masks/sparsity.py).
      count='weights',
      sparsity_penalty=0.0,        # lambda of 'penalty' mode.
      loss_budget=0.5,             # epsilon of 'budget' mode (L <= epsilon).
      dual_lr=0.1,                 # 'target' mode: step size of the multiplier's ascent.
      sparsity_warmup_steps=5_000,  # 'target' mode: ramp the target up from 0 over this many meta-steps.
      sparsity_quadratic=0.0,      # 'target' mode: augmented-Lagrangian weight.
      # 'target' mode, prune -> fine-tune: at this fraction of the run the gates are hardened to exactly
      # target_sparsity and frozen; the rest fine-tunes the weights. 0 disables.
      harden_at_fraction=0.8,
      # Hardening: 'global' (one threshold over every gated layer) or 'layerwise' (each layer to target_sparsity).
      harden_scope='global',
      init_multiplier=0.0,         # Initial Lagrange multiplier.
  ), overrides, 'sparsity')


def eval_section(inner_config: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """Held-out evaluation at the end of the run; ``inner_lr`` follows ``inner_config.inner_lr`` unless set."""
  config = section(dict(
      num_tasks=600,
      shots=(5,),
      steps=(0, 1, 5),               # Inner-step counts reported (the horizon is their max).
      num_query=100,                 # Query examples (per class for classification) of each task.
      inner_lr=0.0,                  # Replaced below by a reference to inner.inner_lr.
      ways=(),                       # Classification: N of the N-way evaluation episodes; () for regression.
      chunk_size=200,                # Tasks per jitted evaluation call (memory).
      split='test',                  # Held-out split of dataset tasks: 'validation' or 'test'.
      # How an episode picks its N classes: 'mixed' (the whole held-out pool) or 'within_alphabet' (all from one
      # held-out alphabet, uniformly among those with >= N classes; Omniglot only).
      protocol='mixed',
      divergence_threshold=1e3,      # A task above this query loss diverged ...
      divergence_ratio=10.0,         # ... or one whose loss grew this much by adapting.
      dense_reference=False,         # Also meta-train a dense model with the same budget.
  ), {k: v for k, v in overrides.items() if k != 'inner_lr'}, 'eval_section')
  config.inner_lr = overrides.get('inner_lr', inner_config.get_ref('inner_lr'))
  return config


def execution(*, convs: bool = False, **overrides) -> ml_collections.ConfigDict:
  """How a step runs (not what it computes); ``convs`` adds ``conv_method``."""
  defaults = dict(
      # Unroll the training inner steps in Python instead of lax.scan (evaluation always scans).
      python_loop=True,
      task_chunk_size=0,         # > 0: lax.map over chunks of this many vmapped tasks (memory / speed).
      gate_noise='hash',         # 'hash' (fast keyed hash) or 'threefry'.
      gate_sample_scope='task',  # 'task': a gate sample per task; 'batch': one per meta-step.
  )
  if convs:
    # 'auto' (problems.conv_method), 'patches' (im2col + batched matmul) or 'conv'.
    defaults['conv_method'] = 'auto'
  return section(defaults, overrides, 'execution')


def run(**overrides) -> ml_collections.ConfigDict:
  """Logging, checkpoints, devices and the non-finite policy (experiments/ops_config.py)."""
  return section(dict(
      log_every_steps=1000,
      checkpoint_every_steps=5000,
      keep_checkpoints=3,
      tensorboard=True,        # Event files in workdir/tensorboard (needs tensorboardX).
      num_devices=1,           # Shard the task batch over this many devices; 0 = all that help (GPU/TPU).
      distributed=False,       # jax.distributed.initialize() first (multi-host).
      nonfinite='stop',        # Non-finite loss/gradients: 'stop' the run or 'skip' the update.
      steps_per_call=1,        # Meta-steps per jitted call (a lax.scan; 1 near log / checkpoint lines).
      max_skipped_steps=100,   # nonfinite='skip': stop the run once more updates than this were skipped (>= 1) ...
      max_skipped_fraction=0.5,  # ... or more than this fraction of the steps so far (from step 20 on; 1: no limit).
      # Dotted fields a resume may change, e.g. ('outer.num_outer_steps',) to extend a run; any other change of a
      # checkpointed run's config is refused (log / checkpoint / tensorboard fields are always allowed).
      allow_changes=(),
  ), overrides, 'run')


def pruning(**overrides) -> ml_collections.ConfigDict:
  """The classic pruning baselines of experiments/baselines.py and the rl allocation (experiments/allocation.py)."""
  return section(dict(
      prune_scope='global',            # 'global' or 'layerwise' top-k.
      prune_distribution='uniform',    # 'uniform' or 'erk' per-layer sparsities (layerwise only).
      finetune_dense_fraction=0.5,     # magnitude / filter_finetune, iterative_magnitude: dense share of the budget.
      imp_cycles=3,                    # iterative_magnitude: prune -> rewind -> train cycles after the dense share ...
      imp_rewind_fraction=0.05,        # ... rewinding kept weights to their values at this share of the budget.
      snip_num_tasks=100,              # snip: tasks in the meta-loss batch at initialisation.
      gradual_begin_fraction=0.1,      # gradual_magnitude: schedule start ...
      gradual_end_fraction=0.75,       # ... and the share of the budget where the target holds.
      gradual_update_every_steps=500,  # Mask recomputed every this many meta-steps.
      # rl (experiments/allocation.py): a REINFORCE controller picks per-layer kept counts where magnitude_finetune
      # prunes. The global budget: 'params' (kept kernel weights) or 'flops' (effective forward FLOPs), at
      # sparsity.target_sparsity of the dense net's.
      budget='params',
      rl_episodes=40,                  # Controller episodes ...
      rl_candidates=8,                 # ... of this many allocations each, evaluated in one vmap.
      rl_finetune_steps=100,           # Meta-steps of each candidate under its mask before its reward ...
      rl_validation_tasks=100,         # ... minus its mean loss on this many fresh validation tasks.
      rl_lr=0.1,                       # Adam step size on the policy (mean and log-std of per-layer logits).
      # Policy mean at start: 'erk' or 'uniform' (equal keep ratios; at 98% of the sinusoid MLP every allocation
      # near it gives a constant output, so every candidate earns the same reward and the controller cannot move).
      rl_init='erk',
      rl_init_std=1.0,                 # Initial std of every layer's logit.
      rl_baseline_decay=0.8,           # Moving average of the reward baseline.
      rl_min_kept=1,                   # Fewest weights any layer keeps.
  ), overrides, 'pruning')


def distill(**overrides) -> ml_collections.ConfigDict:
  """Knowledge distillation from a meta-trained teacher run (``metaprune_jax/meta/distill.py``)."""
  return section(dict(
      weight=0.0,         # The teacher's weight in the query targets; 0 disables distillation.
      teacher='',         # A run folder (experiments.maml_prune --workdir) of the same task: the teacher.
      temperature=1.0,    # Softmax temperature of a classification teacher's logits.
  ), overrides, 'distill')


def config(task: ml_collections.ConfigDict, model: ml_collections.ConfigDict, *, seed: int = 0,
           algorithm: str = 'maml', bn_mode: str | None = None, **sections) -> ml_collections.ConfigDict:
  """A whole config: ``task`` and ``model`` plus every shared section (``sections`` replace the defaults).

  Args:
    task: the task section (``name`` and the task family's fields).
    model: the model section.
    seed: the run's seed.
    algorithm: maml, fomaml, anil, metasgd, reptile or protonet.
    bn_mode: nets with batch norm: the default of ``config.bn_mode``, 'transductive' (the query images of an
      episode are normalised together) or 'inductive' (with the support set's statistics); None: no such field.
    **sections: ``outer``, ``inner``, ``gates``, ``sparsity``, ``eval``, ``execution``, ``run``, ``pruning``,
      ``distill``.
  """
  unknown = sorted(set(sections) - {'outer', 'inner', 'gates', 'sparsity', 'eval', 'execution', 'run', 'pruning',
                                    'distill'})
  if unknown:
    raise KeyError(f'base.config() has no section(s) {unknown}.')
  result = ml_collections.ConfigDict()
  result.seed = seed
  result.num_seeds = 1  # > 1: also seeds seed + 1, ..., seed + num_seeds - 1, stacked in one step (experiments.seeds).
  result.algorithm = algorithm  # maml, fomaml, anil, metasgd, reptile, protonet.
  if bn_mode is not None:
    result.bn_mode = bn_mode  # 'transductive' or 'inductive' (see bn_mode above).
  result.task = task
  result.model = model
  result.outer = sections['outer'] if 'outer' in sections else outer()
  result.inner = sections['inner'] if 'inner' in sections else inner()
  result.gates = sections['gates'] if 'gates' in sections else gates()
  result.sparsity = sections['sparsity'] if 'sparsity' in sections else sparsity()
  result.eval = sections['eval'] if 'eval' in sections else eval_section(result.inner)
  result.execution = sections['execution'] if 'execution' in sections else execution()
  result.run = sections['run'] if 'run' in sections else run()
  result.pruning = sections['pruning'] if 'pruning' in sections else pruning()
  result.distill = sections['distill'] if 'distill' in sections else distill()
  return result
