"""metaprune_jax: meta-learned pruning in JAX/Flax.

Public API, one name per line: the learners, the gate sources, hardening,
sparsity accounting, the meta-step and its wrappers, distillation, loading a trained run, and exporting a
pruned model as a compact one (``export_compact`` / ``load_compact``).
Modules stay importable directly (``from metaprune_jax.pruning import select``)
for everything else.
"""

from metaprune_jax.checkpoint import TrainedRun
from metaprune_jax.export.model import ExportedModel
from metaprune_jax.export.model import export_compact
from metaprune_jax.export.model import load_compact
from metaprune_jax.losses import cross_entropy_loss
from metaprune_jax.losses import mse_loss
from metaprune_jax.masks.hard_concrete import HardConcrete
from metaprune_jax.masks.hard_concrete import deterministic_gates
from metaprune_jax.masks.hard_concrete import gates_from_noise
from metaprune_jax.masks.hard_concrete import init_gate_logits
from metaprune_jax.masks.hard_concrete import prob_nonzero
from metaprune_jax.masks.hard_concrete import sample_gates
from metaprune_jax.masks.harden import harden
from metaprune_jax.masks.l0_objective import L0Objective
from metaprune_jax.masks.masking import apply_masks
from metaprune_jax.masks.masking import count_params
from metaprune_jax.masks.sparsity import expected_density
from metaprune_jax.masks.sparsity import expected_l0
from metaprune_jax.masks.sparsity import nonzero_params
from metaprune_jax.masks.sparsity import realised_sparsity
from metaprune_jax.meta.distill import distilled_sampler
from metaprune_jax.meta.evaluate import learner_traces
from metaprune_jax.meta.evaluate import summarise
from metaprune_jax.meta.gate_source import GateSource
from metaprune_jax.meta.gate_source import no_gates
from metaprune_jax.meta.gate_source import shared_gates
from metaprune_jax.meta.inner import adapt
from metaprune_jax.meta.learner import Learner
from metaprune_jax.meta.learners import LEARNERS
from metaprune_jax.meta.learners import get_learner
from metaprune_jax.meta.maml import anil
from metaprune_jax.meta.maml import fomaml
from metaprune_jax.meta.maml import maml
from metaprune_jax.meta.meta_pruner import meta_pruner_gates
from metaprune_jax.meta.meta_sgd import meta_sgd
from metaprune_jax.meta.optimizer import outer_optimizer
from metaprune_jax.meta.protonet import protonet
from metaprune_jax.meta.reptile import reptile
from metaprune_jax.meta.settings import Execution
from metaprune_jax.meta.settings import InnerSettings
from metaprune_jax.meta.step import MetaState
from metaprune_jax.meta.step import compile_step
from metaprune_jax.meta.step import init_meta_state
from metaprune_jax.meta.step import make_meta_step
from metaprune_jax.nets.mlp import MLP
from metaprune_jax.run import Run
from metaprune_jax.run import load_run
from metaprune_jax.tasks.sinusoid import sample_sinusoid_tasks
from metaprune_jax.types import TaskBatch

__all__ = [
    'Execution', 'ExportedModel', 'GateSource', 'HardConcrete', 'InnerSettings', 'L0Objective', 'LEARNERS', 'Learner', 'MLP',
    'MetaState', 'Run', 'TaskBatch', 'TrainedRun', 'adapt', 'anil', 'apply_masks', 'compile_step', 'count_params',
    'cross_entropy_loss', 'deterministic_gates', 'distilled_sampler', 'expected_density', 'expected_l0', 'export_compact', 'fomaml', 'gates_from_noise',
    'get_learner', 'harden', 'init_gate_logits', 'init_meta_state', 'learner_traces', 'load_compact', 'load_run',
    'make_meta_step', 'maml', 'meta_pruner_gates', 'meta_sgd', 'mse_loss', 'no_gates', 'nonzero_params', 'outer_optimizer',
    'prob_nonzero', 'protonet', 'realised_sparsity', 'reptile', 'sample_gates', 'sample_sinusoid_tasks',
    'shared_gates', 'summarise',
]
