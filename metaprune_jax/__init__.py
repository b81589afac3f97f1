"""metaprune_jax: meta-learned pruning in JAX/Flax.

Public API, one name per line. Modules stay importable directly
(``from metaprune_jax.masks import select``) for everything else.
"""

from metaprune_jax.losses import cross_entropy_loss
from metaprune_jax.losses import mse_loss
from metaprune_jax.masks.hard_concrete import HardConcrete
from metaprune_jax.masks.hard_concrete import deterministic_gates
from metaprune_jax.masks.hard_concrete import expected_density
from metaprune_jax.masks.hard_concrete import expected_l0
from metaprune_jax.masks.hard_concrete import gates_from_noise
from metaprune_jax.masks.hard_concrete import init_gate_logits
from metaprune_jax.masks.hard_concrete import prob_nonzero
from metaprune_jax.masks.hard_concrete import realised_sparsity
from metaprune_jax.masks.hard_concrete import sample_gates
from metaprune_jax.masks.l0_objective import L0Objective
from metaprune_jax.meta.evaluate import query_loss_traces
from metaprune_jax.meta.evaluate import summarise
from metaprune_jax.meta.inner import adapt
from metaprune_jax.meta.maml import InnerSettings
from metaprune_jax.meta.maml import batch_query_loss
from metaprune_jax.meta.maml import task_query_loss
from metaprune_jax.meta.step import MetaState
from metaprune_jax.meta.step import init_meta_state
from metaprune_jax.meta.step import make_meta_step
from metaprune_jax.meta.step import make_outer_optimizer
from metaprune_jax.nets.masked import apply_masks
from metaprune_jax.nets.mlp import MLP
from metaprune_jax.tasks.sinusoid import sample_sinusoid_tasks
from metaprune_jax.types import TaskBatch
