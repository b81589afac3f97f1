"""The meta-step: the pure step, its wrappers (skip_nonfinite, repeat_steps, jit_step), hardening, learning."""

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax import losses
from metaprune_jax.masks import l0_objective
from metaprune_jax.masks import masking
from metaprune_jax.masks import sparsity
from metaprune_jax.meta import maml
from metaprune_jax.meta import optimizer as outer_optimizer
from metaprune_jax.meta import step as meta_step
from metaprune_jax.meta.settings import InnerSettings
from metaprune_jax.nets import mlp
from metaprune_jax.tasks import sinusoid
from tests import test_utils
from tests.meta import common

METRICS = {'outer/objective', 'outer/query_loss', 'mask/expected_sparsity', 'mask/multiplier', 'outer/nonfinite'}


@pytest.mark.parametrize('gated', [False, True])
def test_no_recompilation_after_the_first_step(gated):
  counter = test_utils.CompileCounter()
  state, step, _ = common.build_step(gated=gated, counter=counter)
  for _ in range(3):
    state, metrics = step(state)
  jax.block_until_ready(metrics)
  assert counter.count == 1
  assert int(state.step) == 3 and set(metrics) == METRICS
  if not gated:
    test_utils.assert_equal(metrics['mask/expected_sparsity'], 0.0)


def test_state_is_donated_unless_asked_not_to():
  state, step, _ = common.build_step()
  old_leaf = state.meta_params['params']['Dense_0']['kernel']
  state, _ = step(state)
  assert old_leaf.is_deleted()
  state, step, _ = common.build_step(donate=False)
  old_leaf = state.meta_params['params']['Dense_0']['kernel']
  step(state)
  assert not old_leaf.is_deleted()


def test_a_copy_kept_before_a_donated_step_survives_it():
  # The README's note: the step deletes the state it is given; jnp.copy keeps one that stays readable.
  state, step, _ = common.build_step()
  kept = jax.tree.map(jnp.copy, state)
  new_state, _ = step(state)
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state.meta_params))
  with pytest.raises(RuntimeError, match='deleted'):
    np.asarray(state.meta_params['params']['Dense_0']['kernel'])
  assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(kept))
  again, _ = step(kept)  # The copy is the state before the step: stepping it again gives the same result.
  test_utils.assert_trees_all_equal(again.meta_params, new_state.meta_params)


def test_same_key_same_trajectory():
  results = []
  for _ in range(2):
    state, step, _ = common.build_step()
    for _ in range(5):
      state, metrics = step(state)
    results.append((state.meta_params, metrics))
  test_utils.assert_trees_all_equal(results[0], results[1])


def _comparable(state):
  """``state`` with its PRNG key as integers (key arrays have no NumPy form)."""
  return state._replace(key=jax.random.key_data(state.key))


def test_three_steps_per_call_equal_three_single_calls():
  state, step, _ = common.build_step(donate=False)
  single = state
  for _ in range(3):
    single, _ = step(single)
  counter = test_utils.CompileCounter()
  _, three, _ = common.build_step(steps_per_call=3, counter=counter, donate=False)
  scanned, metrics = three(state)
  assert counter.count == 1 and int(scanned.step) == 3
  assert all(v.shape == (3,) for v in metrics.values())
  test_utils.assert_trees_all_close(_comparable(scanned), _comparable(single), rtol=1e-5, atol=1e-6)
  assert not np.allclose(scanned.meta_params['params']['Dense_1']['kernel'],  # It did move.
                         state.meta_params['params']['Dense_1']['kernel'])


def test_steps_per_call_equals_single_steps_across_hardening_and_does_not_retrace():
  objective = l0_objective.L0Objective(mode='target', target_sparsity=0.5)
  state, step, _ = common.build_step(objective=objective, harden_step=4)
  history = []
  for _ in range(6):
    state, metrics = step(state)
    history.append(metrics)
  counter = test_utils.CompileCounter()
  scanned_state, scanned, _ = common.build_step(objective=objective, harden_step=4, steps_per_call=3,
                                                counter=counter)
  for _ in range(2):  # Steps 0-2, then 3-5 (hardening at step 4 happens inside the second call).
    scanned_state, scanned_metrics = scanned(scanned_state)
  assert counter.count == 1 and int(scanned_state.step) == 6
  test_utils.assert_trees_all_close(scanned_state.meta_params, state.meta_params, rtol=1e-5, atol=1e-6)
  test_utils.assert_trees_all_close(scanned_metrics, jax.tree.map(lambda *v: jnp.stack(v), *history[3:]),
                                    rtol=1e-5, atol=1e-6)


def test_wrappers_reject_invalid_arguments():
  _, _, pure = common.build_step()
  with pytest.raises(ValueError, match='steps_per_call'):
    meta_step.compile_step(pure, steps_per_call=0)
  with pytest.raises(ValueError, match=r"nonfinite='ignore' is invalid"):
    meta_step.compile_step(pure, nonfinite='ignore')
  assert meta_step.repeat_steps(pure, 1) is pure


def test_the_step_factory_is_a_short_composition():
  lines = inspect.getsource(meta_step.make_meta_step).splitlines()
  assert len(lines) <= 40, f'make_meta_step is {len(lines)} lines; keep the pieces in their own functions'
  # The pure step is not jitted: the wrappers are the caller's choice.
  _, _, pure = common.build_step()
  assert not hasattr(pure, 'lower')


def _nan_sampler(bad_keys):
  """Sinusoid tasks whose query targets are NaN when the task key is one of ``bad_keys``."""
  bad = jnp.stack([jax.random.key_data(k) for k in bad_keys])

  def sampler(key, num_tasks):
    tasks = common.sampler(key, num_tasks)
    hit = jnp.any(jnp.all(jax.random.key_data(key)[None] == bad, axis=-1))
    return tasks._replace(query_targets=jnp.where(hit, jnp.nan, tasks.query_targets))
  return sampler


def _task_key(state_key, step):
  """The task key meta-step ``step`` (0-based) draws from the initial state key."""
  key = state_key
  for _ in range(step):
    key, _, _ = jax.random.split(key, 3)
  return jax.random.split(key, 3)[1]


def test_skip_nonfinite_keeps_the_meta_params_while_step_and_key_advance():
  state, _, _ = common.build_step()
  sampler = _nan_sampler([_task_key(state.key, 1)])
  state, step, _ = common.build_step(task_sampler=sampler, nonfinite='skip', donate=False)
  good, metrics = step(state)
  test_utils.assert_equal(metrics['outer/nonfinite'], 0.0)
  assert not np.allclose(good.meta_params['params']['Dense_0']['kernel'],
                         state.meta_params['params']['Dense_0']['kernel'])
  after, metrics = step(good)
  test_utils.assert_equal(metrics['outer/nonfinite'], 1.0)
  test_utils.assert_trees_all_equal((after.meta_params, after.opt_state, after.multiplier),
                                    (good.meta_params, good.opt_state, good.multiplier))
  test_utils.assert_equal(after.step, good.step + 1)
  assert not np.array_equal(jax.random.key_data(after.key), jax.random.key_data(good.key))
  _, stop, _ = common.build_step(task_sampler=sampler, nonfinite='stop', donate=False)
  stopped, _ = stop(stop(state)[0])  # 'stop' only flags it (the launcher stops the run): the update goes in.
  assert not np.all(np.isfinite(np.asarray(stopped.meta_params['params']['Dense_0']['kernel'])))
  # Inside a K-step call the skipped step is the same as alone.
  _, three, _ = common.build_step(task_sampler=sampler, nonfinite='skip', donate=False, steps_per_call=3)
  scanned, scanned_metrics = three(state)
  test_utils.assert_equal(scanned_metrics['outer/nonfinite'], [0.0, 1.0, 0.0])
  test_utils.assert_trees_all_close(_comparable(scanned), _comparable(step(after)[0]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('first_order', [False, True])
def test_meta_training_lowers_the_held_out_query_loss(first_order):
  state, step, _ = common.build_step(gated=False, first_order=first_order, outer_lr=1e-2)
  model = mlp.make_mlp((16, 16), 1)
  held_out = sinusoid.sample_sinusoid_tasks(jax.random.key(9), num_tasks=200, num_support=5, num_query=20)
  learner = maml.maml(losses.mse_loss(model.apply))

  # Jitted once for both calls, instead of an eager, op-by-op evaluation of 200 tasks each time.
  batch_loss = jax.jit(lambda meta_params, tasks: learner.batch_loss(meta_params, tasks, jax.random.key(0),
                                                                      settings=InnerSettings()))

  def held_out_loss(meta_params):
    return float(batch_loss(meta_params, held_out))
  before = held_out_loss(common.copy(state.meta_params))
  for _ in range(500):
    state, _ = step(state)
  assert held_out_loss(state.meta_params) < 0.8 * before


def test_target_mode_drives_sparsity_to_the_target_region():
  # Dual ascent alone lags and overshoots a little (see WORKSPACE.md); hardening makes the target exact.
  objective = l0_objective.L0Objective(mode='target', target_sparsity=0.6, dual_lr=0.05, warmup_steps=500)
  state, step, _ = common.build_step(objective=objective, hidden=(8, 8))
  multipliers = []
  for _ in range(1500):
    state, metrics = step(state)
    multipliers.append(float(metrics['mask/multiplier']))
  assert 0.5 < float(metrics['mask/expected_sparsity']) < 0.8
  # Sparser than the target at the end: the multiplier has turned and is falling.
  if float(metrics['mask/expected_sparsity']) > 0.6:
    assert multipliers[-1] < max(multipliers)
  assert float(sparsity.realised_sparsity(state.meta_params['params'], state.meta_params['gate_logits'])) > 0.45


def test_penalty_mode_prunes_more_with_a_larger_penalty():
  sparsities = []
  for penalty in (0.0, 2.0):
    state, step, _ = common.build_step(objective=l0_objective.L0Objective(mode='penalty', penalty=penalty),
                                       hidden=(8, 8))
    for _ in range(300):
      state, metrics = step(state)
    sparsities.append(float(metrics['mask/expected_sparsity']))
  assert sparsities[1] > sparsities[0] + 0.2


def test_fixed_masks_keep_pruned_weights_exactly_zero_through_inner_and_outer_updates():
  model = mlp.make_mlp((8, 8), 1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']
  masks = jax.tree.map(lambda x: None, params)
  masks['Dense_1']['kernel'] = (jax.random.uniform(jax.random.key(2), (8, 8)) > 0.5).astype(jnp.float32)
  optimizer = outer_optimizer.outer_optimizer({'params': 1e-2, 'gate_logits': 1e-2})
  state = meta_step.init_meta_state(jax.random.key(1), common.copy(params), None, optimizer,
                                    masks=common.copy(masks))  # The step donates its state.
  loss_fn = losses.mse_loss(model.apply)
  learner = maml.maml(loss_fn)
  step = meta_step.compile_step(meta_step.make_meta_step(common.sampler, learner, optimizer, meta_batch_size=4,
                                                         settings=InnerSettings(num_inner_steps=2)))
  for _ in range(20):
    state, _ = step(state)
  kernel = state.meta_params['params']['Dense_1']['kernel']
  pruned = masks['Dense_1']['kernel'] == 0
  assert float(jnp.abs(jnp.where(pruned, kernel, 0.0)).max()) == 0.0
  assert float(jnp.abs(jnp.where(pruned, 0.0, kernel - params['Dense_1']['kernel'])).max()) > 0.0
  # Inside the inner loop too: pruned weights get no gradient.
  task = common.task(common.sampler(jax.random.key(3), 1), 0)
  grads = jax.jit(jax.grad(lambda mp, m: learner.task_loss(mp, task, None, settings=InnerSettings(num_inner_steps=3),
                                                           gate_mode='off', fixed_masks=m)))(state.meta_params, masks)
  assert float(jnp.abs(jnp.where(pruned, grads['params']['Dense_1']['kernel'], 0.0)).max()) == 0.0
  test_utils.assert_trees_all_equal(masking.apply_masks(state.meta_params['params'], masks),
                                    state.meta_params['params'])


def test_hardening_fixes_the_mask_at_exactly_the_target_then_fine_tunes_weights():
  objective = l0_objective.L0Objective(mode='target', target_sparsity=0.75, dual_lr=0.05)
  counter = test_utils.CompileCounter()
  state, step, _ = common.build_step(objective=objective, hidden=(8, 8), harden_step=10, counter=counter)
  for _ in range(10):
    state, _ = step(state)
  before = common.copy(state.meta_params)
  state, metrics = step(state)  # Step index 10: hardens, then the gates and the multiplier freeze.
  hardened = common.copy(state.meta_params)
  gated = sparsity.num_gated_weights(hardened['params'], hardened['gate_logits'])
  realised = float(sparsity.realised_sparsity(hardened['params'], hardened['gate_logits']))
  assert realised == np.float32(math.ceil(0.75 * gated)) / np.float32(gated)  # Exactly ceil(0.75 N) of N.
  assert float(sparsity.realised_sparsity(before['params'], before['gate_logits'])) != pytest.approx(realised)
  multiplier = float(metrics['mask/multiplier'])
  for _ in range(5):
    state, metrics = step(state)
    test_utils.assert_equal(metrics['mask/multiplier'], multiplier)
  test_utils.assert_trees_all_equal(state.meta_params['gate_logits'], hardened['gate_logits'])
  assert float(jnp.abs(state.meta_params['params']['Dense_1']['kernel']
                       - hardened['params']['Dense_1']['kernel']).max()) > 0.0
  assert counter.count == 1


def _seed_states(state, count):
  """``count`` states differing in key and weights (seed ``i``: key folded with ``i``, weights scaled)."""
  return [state._replace(key=jax.random.fold_in(state.key, i),
                         meta_params=jax.tree.map(lambda x, i=i: x * (1.0 + 0.1 * i), state.meta_params))
          for i in range(count)]


def _comparable(state):
  return state._replace(key=jax.random.key_data(state.key))


def test_stack_seeds_round_trips_and_refuses_states_at_different_steps():
  state, _, _ = common.build_step()
  states = _seed_states(state, 3)
  stacked = meta_step.stack_seeds(states)
  assert stacked.step.shape == () and stacked.multiplier.shape == (3,)
  for i, one in enumerate(states):
    test_utils.assert_trees_all_close(_comparable(meta_step.seed_state(stacked, i)), _comparable(one), rtol=0,
                                      atol=0)
  with pytest.raises(ValueError, match='different steps'):
    meta_step.stack_seeds([states[0], states[1]._replace(step=states[1].step + 1)])


@pytest.mark.parametrize('steps_per_call', [1, 3])
def test_over_seeds_equals_each_seed_stepped_alone_across_hardening(steps_per_call):
  # vmap vs loop: seed i of the stacked step follows its own one-seed trajectory, hardening included.
  objective = l0_objective.L0Objective(mode='target', target_sparsity=0.5)
  state, _, pure = common.build_step(objective=objective, harden_step=2)
  states = _seed_states(state, 3)
  alone = []
  single = meta_step.compile_step(pure, donate=False)
  for one in states:
    history = []
    for _ in range(3):
      one, metrics = single(one)
      history.append(metrics)
    alone.append((one, history))
  counter = test_utils.CompileCounter()
  _, _, counted = common.build_step(objective=objective, harden_step=2, counter=counter)
  stacked_step = meta_step.compile_step(counted, steps_per_call=steps_per_call, stacked_seeds=True)
  stacked = meta_step.stack_seeds(states)
  for _ in range(3 // steps_per_call):
    stacked, metrics = stacked_step(stacked)
  assert counter.count == 1 and int(stacked.step) == 3
  last = jax.tree.map(lambda x: x[-1], metrics) if steps_per_call > 1 else metrics
  assert last['outer/nonfinite'].shape == () and last['outer/query_loss'].shape == (3,)
  for i, (one, history) in enumerate(alone):
    test_utils.assert_trees_all_close(_comparable(meta_step.seed_state(stacked, i)), _comparable(one), rtol=1e-5,
                                      atol=1e-6)
    np.testing.assert_allclose(last['outer/query_loss'][i], history[-1]['outer/query_loss'], rtol=1e-5)


def test_stacked_seeds_refuse_a_mesh():
  _, _, pure = common.build_step()
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ('tasks',))
  with pytest.raises(ValueError, match='one device'):
    meta_step.compile_step(pure, mesh=mesh, stacked_seeds=True)
