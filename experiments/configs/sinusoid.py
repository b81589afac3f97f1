"""Sinusoid regression (Finn et al. 2017) with hard-concrete gates at 90% target sparsity.

Paper settings: 2x40 ReLU MLP, meta-batch 25, K=10, one inner SGD step at
lr 0.01, Adam 1e-3, second-order; 150,000 meta-steps (the paper ran 70,000). Override any field with
``--config.FIELD=VALUE``; ``--config.mask=none`` trains dense MAML.
"""

import math

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = 'sinusoid'
  config.seed = 0

  # Tasks: amplitude, phase and input ranges of Finn et al.
  config.amplitude_range = (0.1, 5.0)
  config.phase_range = (0.0, math.pi)
  config.input_range = (-5.0, 5.0)
  # K support examples per meta-training task. The paper's K=10 with one inner step left a heavy tail of
  # 5-shot test tasks that oscillate at lr 0.01 over 5-10 steps on 2 of 3 seeds (WORKSPACE.md, issue 2);
  # K=5 with two inner steps meets the dense bars on every seed we ran.
  config.num_shots = 5
  config.num_query = 10         # Query examples per meta-training task.

  # Model.
  config.hidden_sizes = (40, 40)
  config.activation = 'relu'
  config.kernel_init_std = 0.0  # > 0: truncated-normal kernels with this std; 0: LeCun normal.

  # Meta-learning (outer loop and inner loop).
  config.algorithm = 'maml'
  config.first_order = False    # True: first-order MAML.
  config.meta_batch_size = 25
  config.num_outer_steps = 150_000  # Paper: 70k; 150k stabilises 5-step adaptation (WORKSPACE.md).
  config.outer_lr = 1e-3
  # 'constant' or 'cosine' (decays the weights' outer lr to outer_lr_final_scale * outer_lr
  # over the run; gate logits keep gate_lr).
  config.outer_lr_schedule = 'constant'
  config.outer_lr_final_scale = 0.05
  config.grad_clip_norm = 0.0   # 0 disables clipping.
  config.inner_lr = 0.01
  config.num_inner_steps = 2
  # Unroll the training inner steps in Python instead of lax.scan: a 1-step scan
  # made the meta-step 1.27x slower on CPU (benchmarks/scan_overhead.py).
  # Evaluation (10 steps, traced) always uses the scan.
  config.inner_python_loop = True

  # Gates (hard-concrete L0, Louizos et al. 2018).
  # 'hard_concrete' (shared gates), 'meta_pruner' (task-conditioned gates: a network maps each task's
  # support set and the weights' magnitudes to its own gate logits; metaprune_jax/meta/meta_pruner.py)
  # or 'none' (dense).
  config.mask = 'hard_concrete'
  config.meta_pruner_hidden_sizes = (64, 64)  # phi, the per-example embedding network.
  config.meta_pruner_embed_dim = 32           # Width of the task embedding.
  config.meta_pruner_lr = 1e-3                # Adam step size on the meta-pruner's parameters.
  config.granularity = 'weight'  # 'weight', 'out_unit' (neurons) or 'in_unit'.
  config.dense_layers = ()       # Module names left ungated, e.g. ('Dense_2',).
  config.init_logit = 1.0        # log_alpha at init: P(gate != 0) = 0.93.
  config.gate_lr = 1e-2          # Adam step size on the gate logits.
  config.hc_beta = 2.0 / 3.0
  config.hc_gamma = -0.1
  config.hc_zeta = 1.1
  config.gate_noise = 'hash'     # 'hash' (fast keyed hash) or 'threefry'.
  config.gate_sample_scope = 'task'  # 'task': a gate sample per task; 'batch': one per meta-step.
  config.adapt_gates = False     # Also adapt gate logits in the inner loop.
  config.inner_gate_lr = 0.1

  # Sparsity objective over the expected density rho = E||m||_0 / N.
  config.sparsity_mode = 'target'  # 'target' (dual ascent), 'penalty' or 'budget'.
  config.target_sparsity = 0.9
  config.sparsity_penalty = 0.0    # lambda of 'penalty' mode.
  config.loss_budget = 0.5         # epsilon of 'budget' mode (L <= epsilon).
  config.dual_lr = 0.1
  config.sparsity_warmup_steps = 20_000  # 'target' mode: ramp the target up from 0.
  config.sparsity_quadratic = 0.0  # 'target' mode: augmented-Lagrangian weight.
  # 'target' mode, prune -> fine-tune: at this fraction of the run the gates are
  # hardened to exactly target_sparsity and frozen; the rest fine-tunes weights.
  config.harden_at_fraction = 0.8  # 0 disables.
  config.init_multiplier = 0.0

  # Evaluation on fresh tasks at the end of the run.
  config.eval_num_tasks = 600
  config.eval_shots = (5, 10)
  config.eval_steps = (1, 5, 10)
  config.eval_num_query = 100
  config.eval_inner_lr = config.get_ref('inner_lr')
  config.divergence_threshold = 1e3  # A task above this query loss diverged ...
  config.divergence_ratio = 10.0     # ... or one whose loss grew 10x by adapting.
  config.dense_reference = True    # Also meta-train dense MAML with the same budget.

  # Logging and checkpoints.
  config.log_every_steps = 2000
  config.checkpoint_every_steps = 10_000
  config.keep_checkpoints = 3
  config.tensorboard = True        # Event files in workdir/tensorboard (needs tensorboardX).

  # Run machinery (experiments/ops_config.py).
  config.num_devices = 1           # Shard the task batch over this many devices; 0 = all that help (GPU/TPU).
  config.distributed = False       # jax.distributed.initialize() first (multi-host).
  config.nonfinite = 'stop'        # Non-finite loss/gradients: 'stop' the run or 'skip' the update.
  # Meta-steps per jitted call (a lax.scan; 1 near log / checkpoint lines): a 0.4 ms step pays ~15% for its
  # dispatch on a 2-core CPU (benchmarks/meta_step_speed.py); 50 amortises it. Same numbers as 1.
  config.steps_per_call = 50
  return config
