"""Reptile's outer updates: Adam on its direction, or the paper's interpolation theta + eps_t (mean phi - theta)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import build
from experiments import config_check
from experiments.configs import smoke
from metaprune_jax import losses
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import l0_objective
from metaprune_jax.masks import masking
from metaprune_jax.masks import noise as noise_lib
from metaprune_jax.meta import gate_source
from metaprune_jax.meta import learners
from metaprune_jax.meta import optimizer as outer_optimizer
from metaprune_jax.meta import reptile
from metaprune_jax.meta import step as meta_step
from metaprune_jax.meta.settings import Execution
from metaprune_jax.meta.settings import InnerSettings
from metaprune_jax.nets import mlp
from metaprune_jax.tasks import sinusoid
from tests import test_utils

NUM_TASKS = 3
GATE_LR = 5e-2

# The smoke config with algorithm=reptile, outer_lr=1e-2, after 3 meta-steps of exp.make_step(1), recorded before
# outer.reptile_update existed: sum and sum of |x| over every meta-parameter leaf, Dense_0's first 4 kernel entries
# and the last query loss.
ADAM_BEFORE = {
    'hard_concrete': dict(sum=83.23297289106995, abs=108.98023906070739, loss=4.809111595153809,
                          first=[1.0440559387207031, 0.7755513787269592, -0.8898764848709106, -1.3518588542938232]),
    'none': dict(sum=3.2053160914219916, abs=28.98375500878319, loss=4.942384243011475,
                 first=[1.037954568862915, 0.779125452041626, -0.8908092379570007, -1.3481113910675049]),
}


def _sampler(key, num_tasks):
  return sinusoid.sample_sinusoid_tasks(key, num_tasks=num_tasks, num_support=4, num_query=4)


def _reptile_config(**outer):
  config = smoke.get_config()
  config.algorithm = 'reptile'
  for field, value in outer.items():
    config.outer[field] = value
  return config


def reference_adapted(params, tasks, loss_fn, *, inner_lr, num_inner_steps, gates=None):
  """Each task's adapted weights by a plain Python loop of SGD steps on its support set (no vmap, no scan).

  Args:
    params: the meta-parameters' weights.
    tasks: ``TaskBatch`` ``[num_tasks, ...]``.
    loss_fn: ``(params, inputs, targets) -> scalar``.
    inner_lr: SGD step size.
    num_inner_steps: SGD steps per task.
    gates: per-task gate values ``[num_tasks, *gate_shape]`` multiplied into the weights in every forward pass,
      or None.

  Returns:
    A list of ``num_tasks`` weight trees.
  """
  def support_loss(phi, i):
    task_gates = None if gates is None else jax.tree.map(lambda g: g[i], gates)
    return loss_fn(masking.apply_masks(phi, task_gates), tasks.support_inputs[i], tasks.support_targets[i])

  adapted = []
  for i in range(tasks.support_inputs.shape[0]):
    phi = params
    for _ in range(num_inner_steps):
      grads = jax.grad(support_loss)(phi, i)
      phi = jax.tree.map(lambda w, g: w - inner_lr * g, phi, grads)
    adapted.append(phi)
  return adapted


def reference_interpolation(state, loss_fn, *, eps, inner_lr, num_inner_steps, hc=hard_concrete.HardConcrete()):
  """``theta + eps (mean_i phi_i - theta)`` of one meta-step from ``state``, its tasks and gate noise redrawn."""
  _, task_key, gate_key = jax.random.split(state.key, 3)
  tasks = _sampler(task_key, NUM_TASKS)
  logits = state.meta_params['gate_logits']
  gates = None
  if logits is not None:
    noise = noise_lib.uniform_tree(logits, gate_key, num_tasks=NUM_TASKS)
    gates = jax.tree.map(lambda la, u: hard_concrete.gates_from_noise(la, u, hc), logits, noise)
  theta = state.meta_params['params']
  adapted = reference_adapted(theta, tasks, loss_fn, inner_lr=inner_lr, num_inner_steps=num_inner_steps,
                              gates=gates)
  mean_adapted = jax.tree.map(lambda *phis: sum(phis) / len(phis), *adapted)
  return jax.tree.map(lambda t, m: t + eps * (m - t), theta, mean_adapted)


def _meta_step(gated, update, objective, *, eps=0.7, num_inner_steps=3, inner_lr=0.1, init_multiplier=0.0):
  """``(state, pure step, loss_fn)`` of Reptile on a tiny tanh MLP with the outer update ``update``."""
  model = mlp.make_mlp((6,), 1, 'tanh')
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']
  logits = hard_concrete.init_gate_logits(params, 'weight', init_logit=0.5) if gated else None
  interpolate = update == 'interpolate'
  optimizer = outer_optimizer.outer_optimizer({'params': eps if interpolate else 1e-2, 'gate_logits': GATE_LR},
                                              sgd_groups=('params',) if interpolate else ())
  state = meta_step.init_meta_state(jax.random.key(3), params, logits, optimizer, init_multiplier)
  loss_fn = losses.mse_loss(model.apply)
  learner = reptile.reptile(loss_fn, execution=Execution(python_loop=False))
  step = meta_step.make_meta_step(_sampler, learner, optimizer, meta_batch_size=NUM_TASKS,
                                  settings=InnerSettings(inner_lr=inner_lr, num_inner_steps=num_inner_steps),
                                  gates=gate_source.shared_gates() if gated else gate_source.no_gates(),
                                  objective=objective)
  return state, step, loss_fn


@pytest.mark.parametrize('gated,objective', [
    (False, l0_objective.L0Objective()),
    (True, l0_objective.L0Objective(mode='target', target_sparsity=0.5)),
    (True, l0_objective.L0Objective(mode='penalty', penalty=3.0)),
])
@pytest.mark.parametrize('jitted', [False, True])
def test_interpolate_moves_the_weights_exactly_to_theta_plus_eps_times_mean_adapted_minus_theta(
    gated, objective, jitted):
  # A nonzero multiplier: the L0 term must not reach the weights.
  state, step, loss_fn = _meta_step(gated, 'interpolate', objective, init_multiplier=2.0)
  expected = reference_interpolation(state, loss_fn, eps=0.7, inner_lr=0.1, num_inner_steps=3)
  new_state, _ = (jax.jit(step) if jitted else step)(state)
  test_utils.assert_trees_all_close(new_state.meta_params['params'], expected, rtol=1e-5, atol=1e-6)
  moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(new_state.meta_params['params']),
                                                               jax.tree.leaves(state.meta_params['params'])))
  assert moved > 1e-3  # The check has something to see.


def test_interpolate_keeps_adam_on_the_gate_logits():
  objective = l0_objective.L0Objective(mode='target', target_sparsity=0.5)
  state, interpolate_step, _ = _meta_step(True, 'interpolate', objective, init_multiplier=2.0)
  adam_state, adam_step, _ = _meta_step(True, 'adam', objective, init_multiplier=2.0)
  after_interpolate, after_adam = interpolate_step(state)[0], adam_step(adam_state)[0]
  # The same gradient, and Adam acts per leaf: the gate logits take the same first step under either update ...
  test_utils.assert_trees_all_close(after_interpolate.meta_params['gate_logits'],
                                    after_adam.meta_params['gate_logits'], rtol=1e-6, atol=1e-7)
  # ... which is Adam's (about gate_lr per logit on the first step), while the weights differ.
  step_sizes = jnp.concatenate([jnp.ravel(jnp.abs(a - b)) for a, b in zip(
      jax.tree.leaves(after_interpolate.meta_params['gate_logits']), jax.tree.leaves(state.meta_params['gate_logits']))])
  test_utils.assert_close(jnp.median(step_sizes), GATE_LR, rtol=1e-2)
  assert not np.allclose(np.asarray(after_interpolate.meta_params['params']['Dense_0']['kernel']),
                         np.asarray(after_adam.meta_params['params']['Dense_0']['kernel']))


def test_the_built_step_interpolates_with_the_configured_step_size():
  config = _reptile_config(reptile_update='interpolate', reptile_step_size=0.8, reptile_step_size_final=0.0)
  config.gates.mask = 'hard_concrete'
  exp = build.build(config)
  state = exp.init_state()
  _, task_key, gate_key = jax.random.split(state.key, 3)
  tasks = exp.problem.train_sampler(task_key, config.outer.meta_batch_size)
  logits = state.meta_params['gate_logits']
  noise = noise_lib.uniform_tree(logits, gate_key, num_tasks=config.outer.meta_batch_size)
  gates = jax.tree.map(lambda la, u: hard_concrete.gates_from_noise(la, u, exp.settings.hc), logits, noise)
  theta = jax.tree.map(jnp.copy, state.meta_params['params'])
  adapted = reference_adapted(theta, tasks, exp.problem.loss_fn, inner_lr=config.inner.inner_lr,
                              num_inner_steps=config.inner.num_inner_steps, gates=gates)
  mean_adapted = jax.tree.map(lambda *phis: sum(phis) / len(phis), *adapted)
  new_state, _ = exp.make_step(1)(state)
  expected = jax.tree.map(lambda t, m: t + 0.8 * (m - t), theta, mean_adapted)
  test_utils.assert_trees_all_close(new_state.meta_params['params'], expected, rtol=1e-5, atol=1e-6)


def test_step_size_anneals_linearly_from_the_initial_to_the_final_value():
  config = _reptile_config(reptile_update='interpolate', reptile_step_size=1.0, reptile_step_size_final=0.2,
                           num_outer_steps=10)
  optimizer = build.outer_optimizer(config)
  grads = {'params': {'w': jnp.ones(2)}, 'gate_logits': {'w': jnp.ones(2)}}
  state = optimizer.init(grads)
  steps = {}
  for t in range(12):
    updates, state = optimizer.update(grads, state, grads)
    steps[t] = -updates['params']['w']
    # The gate logits keep Adam: a constant gradient gives a step of exactly gate_lr.
    test_utils.assert_close(updates['gate_logits']['w'], -config.gates.gate_lr * jnp.ones(2), rtol=1e-5)
  for t, eps in ((0, 1.0), (5, 0.6), (9, 0.28), (10, 0.2), (11, 0.2)):
    test_utils.assert_close(steps[t], eps * jnp.ones(2), rtol=1e-6, err_msg=f'update {t}')


def test_clipping_leaves_the_interpolated_group_alone():
  optimizer = outer_optimizer.outer_optimizer({'params': 0.5, 'gate_logits': 0.1}, grad_clip_norm=1e-3,
                                              sgd_groups=('params',))
  grads = {'params': {'w': jnp.array([30.0, -40.0])}, 'gate_logits': {'w': jnp.array([3.0, 4.0])}}
  updates, _ = optimizer.update(grads, optimizer.init(grads), grads)
  test_utils.assert_close(updates['params']['w'], -0.5 * grads['params']['w'], rtol=1e-7)
  reference = optax.chain(optax.clip_by_global_norm(1e-3), optax.adam(0.1))
  expected, _ = reference.update(grads['gate_logits'], reference.init(grads['gate_logits']))
  test_utils.assert_trees_all_close(updates['gate_logits'], expected, rtol=1e-6, atol=1e-9)


def test_an_sgd_group_without_a_learning_rate_is_named():
  with pytest.raises(ValueError, match=r"sgd_groups \['weights'\] have no learning rate"):
    outer_optimizer.outer_optimizer({'params': 1.0}, sgd_groups=('weights',))


@pytest.mark.parametrize('mask', ['hard_concrete', 'none'])
def test_adam_update_gives_the_numbers_it_gave_before_the_option(mask):
  config = _reptile_config(outer_lr=1e-2)
  config.gates.mask = mask
  assert config.outer.reptile_update == 'adam'
  exp = build.build(config)
  state, step = exp.init_state(), exp.make_step(1)
  for _ in range(3):
    state, metrics = step(state)
  leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(state.meta_params)]
  before = ADAM_BEFORE[mask]
  test_utils.assert_close(sum(np.sum(x) for x in leaves), before['sum'], rtol=1e-6)
  test_utils.assert_close(sum(np.sum(np.abs(x)) for x in leaves), before['abs'], rtol=1e-6)
  test_utils.assert_close(np.ravel(state.meta_params['params']['Dense_0']['kernel'])[:4], before['first'], rtol=1e-6)
  test_utils.assert_close(metrics['outer/query_loss'], before['loss'], rtol=1e-5)


def test_adam_update_keeps_the_optimizer_state_of_saved_runs():
  exp = build.build(_reptile_config())
  meta_params = exp.init_state().meta_params
  rates = {name: optax.scale_by_learning_rate(1e-3) for name in ('params', 'gate_logits', 'meta_pruner', 'inner_lrs')}
  before = optax.chain(optax.scale_by_adam(), optax.partition(rates, outer_optimizer.group_labels))
  assert jax.tree.structure(exp.optimizer.init(meta_params)) == jax.tree.structure(before.init(meta_params))


@pytest.mark.parametrize('algorithm', [name for name in learners.LEARNERS if name != 'reptile'])
def test_interpolate_is_refused_for_other_algorithms(algorithm):
  config = _reptile_config(reptile_update='interpolate')
  config.algorithm = algorithm
  with pytest.raises(ValueError, match=rf"--config.outer.reptile_update='interpolate' is invalid: it is Reptile's "
                                       rf'outer update .* --config.algorithm={algorithm} has no Reptile direction'):
    build.check(config)


@pytest.mark.parametrize('field,value,message', [
    ('outer.reptile_update', 'sgd', r"--config.outer.reptile_update='sgd' is invalid: use one of \('adam', "),
    ('outer.reptile_step_size', 0.0, r'--config.outer.reptile_step_size=0.0 is invalid: must be a finite number > 0'),
    ('outer.reptile_step_size_final', -0.1, r'--config.outer.reptile_step_size_final=-0.1 is invalid'),
    ('sparsity.sparsity_mode', 'budget', r"sparsity_mode='budget' multiplies the query loss"),
])
def test_bad_interpolate_settings_name_the_flag(field, value, message):
  config = _reptile_config(reptile_update='interpolate')
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    build.check(config)


def test_a_run_saved_before_the_option_keeps_adam():
  stored = _reptile_config()
  for field in ('reptile_update', 'reptile_step_size', 'reptile_step_size_final'):
    del stored.outer[field]
  assert set(config_check.fill_missing(stored)) >= {'outer.reptile_update', 'outer.reptile_step_size'}
  assert stored.outer.reptile_update == 'adam'
  build.check(stored)
