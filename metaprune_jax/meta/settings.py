"""What an inner loop computes (``InnerSettings``) and how a step executes (``Execution``).

``InnerSettings`` changes the numbers: step size, number of steps, first or
second order, whether gates adapt, the hard-concrete constants. ``Execution``
holds the choices of formulation: unrolled or scanned inner steps, the gate-noise
generator, task chunking, gate-sample scope and the convolution formulation.
Learners bind an ``Execution`` when they are built (``learners.get_learner``);
the ``InnerSettings`` travel with every call.
"""

from typing import NamedTuple

from metaprune_jax.masks import hard_concrete

GATE_MODES = ('sample', 'deterministic', 'off')
GATE_SAMPLE_SCOPES = ('task', 'batch')
NOISE_KINDS = ('hash', 'threefry')


class InnerSettings(NamedTuple):
  """Inner-loop settings shared by training and evaluation.

  Attributes:
    inner_lr: SGD step size on the weights.
    num_inner_steps: adaptation steps (static).
    first_order: FOMAML when True.
    adapt_gates: also adapt gate logits in the inner loop.
    inner_gate_lr: SGD step size on gate logits when ``adapt_gates``.
    hc: hard-concrete constants.
  """
  inner_lr: float = 0.01
  num_inner_steps: int = 1
  first_order: bool = False
  adapt_gates: bool = False
  inner_gate_lr: float = 0.1
  hc: hard_concrete.HardConcrete = hard_concrete.HardConcrete()


class Execution(NamedTuple):
  """How a meta-step runs.

  Attributes:
    python_loop: unroll the inner steps in Python instead of ``lax.scan``
      (straight-line code; compile time grows with the step count).
    noise: gate-noise generator, ``'hash'`` or ``'threefry'`` (``masks.noise``).
    task_chunk_size: > 0: the meta-batch runs as a ``lax.map`` over chunks of
      this many vmapped tasks (smaller scratch buffers); 0 vmaps the whole batch.
    gate_sample_scope: ``'task'``: every task of a meta-batch draws its own gate
      sample; ``'batch'``: one sample per meta-step shared by all its tasks (one
      draw per minibatch, as in Louizos et al. 2018).
    conv_method: convolution formulation of conv nets (``nets.conv``); read by
      the problem that builds the net.
  """
  python_loop: bool = False
  noise: str = 'hash'
  task_chunk_size: int = 0
  gate_sample_scope: str = 'task'
  conv_method: str = 'auto'


def check_execution(execution: Execution) -> None:
  """Raises ValueError naming the field when ``execution`` holds an unknown choice."""
  if execution.noise not in NOISE_KINDS:
    raise ValueError(f'noise={execution.noise!r} is unknown; use one of {NOISE_KINDS}.')
  if execution.gate_sample_scope not in GATE_SAMPLE_SCOPES:
    raise ValueError(f'gate_sample_scope={execution.gate_sample_scope!r} is unknown; use one of '
                     f'{GATE_SAMPLE_SCOPES}.')
  if int(execution.task_chunk_size) < 0:
    raise ValueError(f'task_chunk_size={execution.task_chunk_size!r} must be >= 0 (0: no chunks).')
