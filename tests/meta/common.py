"""Small sinusoid MLP problems and meta-steps shared by the tests of ``metaprune_jax.meta``."""

import jax
import jax.numpy as jnp

from metaprune_jax import losses
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import l0_objective
from metaprune_jax.meta import gate_source
from metaprune_jax.meta import maml
from metaprune_jax.meta import optimizer as outer_optimizer
from metaprune_jax.meta import step as meta_step
from metaprune_jax.meta.settings import Execution
from metaprune_jax.meta.settings import InnerSettings
from metaprune_jax.nets import mlp
from metaprune_jax.tasks import sinusoid


def mlp_problem(hidden=(6,), granularity='weight', num_tasks=3, shots=4, init_logit=0.5, activation='tanh'):
  """``(meta_params, tasks, loss_fn)``: a small MLP with hard-concrete gates and a sinusoid task batch."""
  model = mlp.make_mlp(hidden, 1, activation)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']
  gates = hard_concrete.init_gate_logits(params, granularity, init_logit=init_logit)
  tasks = sinusoid.sample_sinusoid_tasks(jax.random.key(1), num_tasks=num_tasks, num_support=shots,
                                         num_query=shots)
  return {'params': params, 'gate_logits': gates}, tasks, losses.mse_loss(model.apply)


def task(tasks, i):
  """Task ``i`` of a batch (no task axis)."""
  return jax.tree.map(lambda x: x[i], tasks)


def sampler(key, num_tasks):
  return sinusoid.sample_sinusoid_tasks(key, num_tasks=num_tasks, num_support=5, num_query=5)


def build_step(gated=True, objective=l0_objective.L0Objective(), counter=None, hidden=(16, 16), first_order=False,
               outer_lr=3e-3, gate_lr=5e-2, steps_per_call=1, harden_step=None, nonfinite='stop', donate=True,
               task_sampler=sampler, num_inner_steps=1, execution=Execution()):
  """``(state, compiled step, pure step)`` of MAML on sinusoid tasks, shared gates or dense.

  ``counter`` (a ``CompileCounter``) counts the traces of the task sampler: one per compilation.
  """
  model = mlp.make_mlp(hidden, 1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']
  gates = hard_concrete.init_gate_logits(params, 'weight') if gated else None
  optimizer = outer_optimizer.outer_optimizer({'params': outer_lr, 'gate_logits': gate_lr})
  state = meta_step.init_meta_state(jax.random.key(1), params, gates, optimizer)
  learner = maml.maml(losses.mse_loss(model.apply), execution=execution)
  source = gate_source.shared_gates(target_sparsity=objective.target_sparsity if harden_step is not None else None)
  pure = meta_step.make_meta_step(task_sampler if counter is None else counter.wrap(task_sampler), learner,
                                  optimizer, meta_batch_size=4,
                                  settings=InnerSettings(first_order=first_order, num_inner_steps=num_inner_steps),
                                  gates=source if gated else gate_source.no_gates(), objective=objective,
                                  harden_step=harden_step)
  return state, meta_step.compile_step(pure, steps_per_call=steps_per_call, nonfinite=nonfinite,
                                       donate=donate), pure


def copy(tree):
  """A copy of ``tree``'s arrays (a donated state deletes its buffers)."""
  return jax.tree.map(jnp.copy, tree)
