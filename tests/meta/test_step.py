"""The jitted meta-step: no retracing, learning happens, target sparsity is reached."""

import jax
import jax.numpy as jnp
import pytest

from metaprune_jax import losses
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import l0_objective
from metaprune_jax.meta import maml
from metaprune_jax.meta import step as meta_step
from metaprune_jax.nets import mlp
from metaprune_jax.tasks import sinusoid
from tests import test_utils


def _build(gated=True, objective=l0_objective.L0Objective(), counter=None, hidden=(16, 16), first_order=False,
           outer_lr=3e-3, gate_lr=5e-2, steps_per_call=1, harden_step=None):
  model = mlp.make_mlp(hidden, 1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']
  gates = hard_concrete.init_gate_logits(params, 'weight') if gated else None
  optimizer = meta_step.make_outer_optimizer(outer_lr, gate_lr)
  state = meta_step.init_meta_state(jax.random.key(1), params, gates, optimizer)

  def sampler(key, num_tasks):
    if counter is not None:
      counter.count += 1  # Runs once per trace, never per call.
    return sinusoid.sample_sinusoid_tasks(key, num_tasks=num_tasks, num_support=5, num_query=5)
  step = meta_step.make_meta_step(sampler, losses.mse_loss(model.apply), optimizer, meta_batch_size=4,
                                  settings=maml.InnerSettings(first_order=first_order), objective=objective,
                                  steps_per_call=steps_per_call, harden_step=harden_step)
  return state, step


@pytest.mark.parametrize('gated', [False, True])
def test_no_recompilation_after_the_first_step(gated):
  counter = test_utils.CompileCounter()
  state, step = _build(gated=gated, counter=counter)
  for _ in range(3):
    state, metrics = step(state)
  jax.block_until_ready(metrics)
  assert counter.count == 1
  assert int(state.step) == 3


def test_state_is_donated():
  state, step = _build()
  old_leaf = state.meta_params['params']['Dense_0']['kernel']
  state, _ = step(state)
  assert old_leaf.is_deleted()


def test_same_key_same_trajectory():
  results = []
  for _ in range(2):
    state, step = _build()
    for _ in range(5):
      state, metrics = step(state)
    results.append((state.meta_params, metrics))
  test_utils.assert_trees_all_equal(results[0], results[1])


def test_steps_per_call_equals_single_steps_and_does_not_retrace():
  objective = l0_objective.L0Objective(mode='target', target_sparsity=0.5)
  state, step = _build(objective=objective, harden_step=4)
  history = []
  for _ in range(6):
    state, metrics = step(state)
    history.append(metrics)
  counter = test_utils.CompileCounter()
  scanned_state, scanned = _build(objective=objective, harden_step=4, steps_per_call=3, counter=counter)
  for _ in range(2):  # Steps 0-2, then 3-5 (hardening at step 4 happens inside the second call).
    scanned_state, scanned_metrics = scanned(scanned_state)
  assert counter.count == 1 and int(scanned_state.step) == 6
  assert all(v.shape == (3,) for v in scanned_metrics.values())
  test_utils.assert_trees_all_close(scanned_state.meta_params, state.meta_params, rtol=1e-5, atol=1e-6)
  test_utils.assert_trees_all_close(scanned_metrics, jax.tree.map(lambda *v: jnp.stack(v), *history[3:]),
                                    rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='steps_per_call'):
    _build(steps_per_call=0)


@pytest.mark.parametrize('first_order', [False, True])
def test_meta_training_lowers_the_held_out_query_loss(first_order):
  state, step = _build(gated=False, first_order=first_order, outer_lr=1e-2)
  model = mlp.make_mlp((16, 16), 1)
  held_out = sinusoid.sample_sinusoid_tasks(jax.random.key(9), num_tasks=200, num_support=5, num_query=20)

  def held_out_loss(meta_params):
    return float(maml.batch_query_loss(meta_params, held_out, jax.random.key(0),
                                       loss_fn=losses.mse_loss(model.apply), settings=maml.InnerSettings()))
  before = held_out_loss(jax.tree.map(jnp.copy, state.meta_params))
  for _ in range(500):
    state, _ = step(state)
  assert held_out_loss(state.meta_params) < 0.8 * before


def test_target_mode_drives_sparsity_to_the_target_region():
  # Dual ascent alone lags and overshoots a little (see WORKSPACE.md); hardening makes the target exact.
  objective = l0_objective.L0Objective(mode='target', target_sparsity=0.6, dual_lr=0.05, warmup_steps=500)
  state, step = _build(objective=objective, hidden=(8, 8))
  multipliers = []
  for _ in range(1500):
    state, metrics = step(state)
    multipliers.append(float(metrics['mask/multiplier']))
  assert 0.5 < float(metrics['mask/expected_sparsity']) < 0.8
  # Sparser than the target at the end: the multiplier has turned and is falling.
  if float(metrics['mask/expected_sparsity']) > 0.6:
    assert multipliers[-1] < max(multipliers)
  report = meta_step.sparsity_metrics(state.meta_params['params'], state.meta_params['gate_logits'],
                                      hard_concrete.HardConcrete())
  assert float(report['mask/realised_sparsity']) > 0.45


def test_penalty_mode_prunes_more_with_a_larger_penalty():
  sparsities = []
  for penalty in (0.0, 2.0):
    state, step = _build(objective=l0_objective.L0Objective(mode='penalty', penalty=penalty), hidden=(8, 8))
    for _ in range(300):
      state, metrics = step(state)
    sparsities.append(float(metrics['mask/expected_sparsity']))
  assert sparsities[1] > sparsities[0] + 0.2


def test_fixed_masks_keep_pruned_weights_exactly_zero_through_inner_and_outer_updates():
  model = mlp.make_mlp((8, 8), 1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']
  masks = jax.tree.map(lambda x: None, params)
  masks['Dense_1']['kernel'] = (jax.random.uniform(jax.random.key(2), (8, 8)) > 0.5).astype(jnp.float32)
  optimizer = meta_step.make_outer_optimizer(1e-2)
  state = meta_step.init_meta_state(jax.random.key(1), jax.tree.map(jnp.copy, params), None, optimizer,
                                    masks=jax.tree.map(jnp.copy, masks))  # The step donates its state.
  sampler = lambda key, n: sinusoid.sample_sinusoid_tasks(key, num_tasks=n, num_support=5, num_query=5)
  step = meta_step.make_meta_step(sampler, losses.mse_loss(model.apply), optimizer, meta_batch_size=4,
                                  settings=maml.InnerSettings(num_inner_steps=2))
  for _ in range(20):
    state, _ = step(state)
  kernel = state.meta_params['params']['Dense_1']['kernel']
  pruned = masks['Dense_1']['kernel'] == 0
  assert float(jnp.abs(jnp.where(pruned, kernel, 0.0)).max()) == 0.0
  assert float(jnp.abs(jnp.where(pruned, 0.0, kernel - params['Dense_1']['kernel'])).max()) > 0.0
  # Inside the inner loop too: adapted weights keep the zeros.
  task = jax.tree.map(lambda x: x[0], sampler(jax.random.key(3), 1))
  from metaprune_jax.meta import inner  # pylint: disable=g-import-not-at-top
  support = lambda p: losses.mse_loss(model.apply)(
      jax.tree.map(lambda w, m: w if m is None else w * m, p, masks), task.support_inputs, task.support_targets)
  adapted = inner.adapt(support, state.meta_params['params'], inner_lr=0.1, num_inner_steps=3)
  assert float(jnp.abs(jnp.where(pruned, adapted['Dense_1']['kernel'], 0.0)).max()) == 0.0


def test_hardening_fixes_the_mask_at_exactly_the_target_then_fine_tunes_weights():
  model = mlp.make_mlp((8, 8), 1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']
  gates = hard_concrete.init_gate_logits(params, 'weight')
  objective = l0_objective.L0Objective(mode='target', target_sparsity=0.75, dual_lr=0.05)
  optimizer = meta_step.make_outer_optimizer(3e-3, 5e-2)
  state = meta_step.init_meta_state(jax.random.key(1), params, gates, optimizer)
  sampler = lambda key, n: sinusoid.sample_sinusoid_tasks(key, num_tasks=n, num_support=5, num_query=5)
  counter = test_utils.CompileCounter()
  step = meta_step.make_meta_step(counter.wrap(sampler), losses.mse_loss(model.apply), optimizer,
                                  meta_batch_size=4, settings=maml.InnerSettings(), objective=objective,
                                  harden_step=10)
  for _ in range(10):
    state, _ = step(state)
  state, _ = step(state)  # Step index 10: hardens.
  hardened = jax.tree.map(jnp.copy, state.meta_params)
  realised = float(hard_concrete.realised_sparsity(hardened['params'], hardened['gate_logits']))
  assert realised == pytest.approx(0.75, abs=1 / 144)
  for _ in range(5):
    state, _ = step(state)
  test_utils.assert_trees_all_equal(state.meta_params['gate_logits'], hardened['gate_logits'])
  assert float(jnp.abs(state.meta_params['params']['Dense_1']['kernel']
                       - hardened['params']['Dense_1']['kernel']).max()) > 0.0
  assert counter.count == 1


def test_group_learning_rate_schedules_follow_the_update_count():
  schedule = lambda count: 0.1 / (1.0 + count)
  transform = meta_step.scale_by_group({'params': schedule, 'gate_logits': 0.5})
  updates = {'params': {'w': jnp.ones((2,))}, 'gate_logits': {'w': jnp.ones((2,))}}
  state = transform.init(updates)
  for count in range(3):
    scaled, state = transform.update(updates, state)
    test_utils.assert_close(scaled['params']['w'], -schedule(count) * jnp.ones((2,)))
    test_utils.assert_close(scaled['gate_logits']['w'], -0.5 * jnp.ones((2,)))
