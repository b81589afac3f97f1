"""One task's inner loop with gates (``adapt.adapt_task``) and the batch mean (``adapt.mean_over_tasks``).

vmap vs a Python loop over tasks, per-task and per-batch gate noise, gates off,
adapted gates, fixed masks, unknown gate modes and execution choices.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import noise as noise_lib
from metaprune_jax.meta import adapt
from metaprune_jax.meta import maml
from metaprune_jax.meta.settings import Execution
from metaprune_jax.meta.settings import GATE_MODES
from metaprune_jax.meta.settings import InnerSettings
from metaprune_jax.meta.settings import check_execution
from tests import test_utils
from tests.meta import common


def _row(noise, i):
  return jax.tree.map(lambda n: n[i], noise)


@pytest.mark.parametrize('gate_mode', GATE_MODES)
def test_vmap_over_tasks_equals_python_loop(gate_mode):
  meta_params, tasks, loss_fn = common.mlp_problem()
  settings, execution = InnerSettings(inner_lr=0.05, num_inner_steps=2), Execution()
  learner = maml.maml(loss_fn, execution=execution)
  key = jax.random.key(2)
  batched = learner.batch_loss(meta_params, tasks, key, settings=settings, gate_mode=gate_mode)
  noise = noise_lib.uniform_tree(meta_params['gate_logits'], key, method=execution.noise, num_tasks=3)
  looped = np.mean([learner.task_loss(meta_params, common.task(tasks, i), _row(noise, i), settings=settings,
                                      gate_mode=gate_mode) for i in range(3)])
  test_utils.assert_close(batched, looped, rtol=1e-5)


def test_mean_over_tasks_gives_each_task_its_own_noise_row():
  meta_params, tasks, _ = common.mlp_problem()
  key, execution = jax.random.key(3), Execution()
  def first_noise(mp, task, noise):
    del mp
    return jax.tree.leaves(noise)[0].ravel()[0] + 0.0 * task.support_inputs.sum()
  got = adapt.mean_over_tasks(first_noise, meta_params, tasks, key, execution=execution)
  noise = noise_lib.uniform_tree(meta_params['gate_logits'], key, method='hash', num_tasks=3)
  test_utils.assert_close(got, jnp.mean(jax.tree.leaves(noise)[0].reshape(3, -1)[:, 0]), rtol=1e-6)


def test_gates_are_sampled_independently_per_task():
  meta_params, _, _ = common.mlp_problem()
  noise, axis = adapt.batch_gate_noise(meta_params, jax.random.key(6), Execution(), 3, 'sample')
  assert axis == 0
  for leaf in jax.tree.leaves(noise):
    assert leaf.shape[0] == 3
    assert not np.allclose(leaf[0], leaf[1]) and not np.allclose(leaf[1], leaf[2])
  for mode in ('deterministic', 'off'):  # Fixed gates draw nothing.
    assert adapt.batch_gate_noise(meta_params, jax.random.key(6), Execution(), 3, mode) == (None, None)
  dense = {'params': meta_params['params'], 'gate_logits': None}
  assert adapt.batch_gate_noise(dense, jax.random.key(6), Execution(), 3, 'sample') == (None, None)


def test_batch_scope_gives_every_task_the_same_gate_sample():
  meta_params, tasks, loss_fn = common.mlp_problem()
  settings, key = InnerSettings(inner_lr=0.05), jax.random.key(7)
  execution = Execution(gate_sample_scope='batch')

  def loss_and_grad(execution):
    learner = maml.maml(loss_fn, execution=execution)
    return jax.value_and_grad(lambda mp: learner.batch_loss(mp, tasks, key, settings=settings))(meta_params)
  shared, shared_grads = loss_and_grad(execution)
  noise, axis = adapt.batch_gate_noise(meta_params, key, execution, 3, 'sample')
  assert axis is None
  assert all(leaf.shape == gate.shape for leaf, gate in zip(jax.tree.leaves(noise),
                                                            jax.tree.leaves(meta_params['gate_logits'])))
  test_utils.assert_trees_all_equal(noise, noise_lib.uniform_tree(meta_params['gate_logits'], key,
                                                                  method=execution.noise))
  learner = maml.maml(loss_fn, execution=execution)
  looped = np.mean([learner.task_loss(meta_params, common.task(tasks, i), noise, settings=settings)
                    for i in range(3)])
  test_utils.assert_close(shared, looped, rtol=1e-5)
  per_task, per_task_grads = loss_and_grad(Execution(gate_sample_scope='task'))
  assert abs(float(per_task) - float(shared)) > 1e-6  # Independent samples give another estimate.
  for grads in (shared_grads, per_task_grads):
    test_utils.assert_all_finite(grads['gate_logits'])
  with pytest.raises(ValueError, match='gate_sample_scope'):
    maml.maml(loss_fn, execution=Execution(gate_sample_scope='episode')).batch_loss(meta_params, tasks, key,
                                                                                   settings=settings)


@pytest.mark.parametrize('field,value', [('noise', 'philox'), ('gate_sample_scope', 'episode'),
                                         ('task_chunk_size', -1)])
def test_unknown_execution_choices_name_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    check_execution(Execution()._replace(**{field: value}))
  meta_params, tasks, _ = common.mlp_problem()
  with pytest.raises(ValueError, match=field):
    adapt.mean_over_tasks(lambda mp, t, n: jnp.sum(t.support_inputs), meta_params, tasks, jax.random.key(0),
                          execution=Execution()._replace(**{field: value}))
  check_execution(Execution())  # The defaults pass.


def test_gates_off_ignores_gate_logits_and_adapt_gates_changes_the_result():
  meta_params, tasks, loss_fn = common.mlp_problem()
  task, learner = common.task(tasks, 0), maml.maml(loss_fn)
  dense = {'params': meta_params['params'], 'gate_logits': None}
  test_utils.assert_close(learner.task_loss(meta_params, task, None, settings=InnerSettings(), gate_mode='off'),
                          learner.task_loss(dense, task, None, settings=InnerSettings(), gate_mode='sample'))
  plain = learner.task_loss(meta_params, task, None, settings=InnerSettings(inner_lr=0.05),
                            gate_mode='deterministic')
  adapted = learner.task_loss(meta_params, task, None,
                              settings=InnerSettings(inner_lr=0.05, adapt_gates=True, inner_gate_lr=1.0),
                              gate_mode='deterministic')
  assert float(plain) != float(adapted)


def test_unknown_gate_mode_is_rejected():
  meta_params, tasks, loss_fn = common.mlp_problem()
  with pytest.raises(ValueError, match='gate_mode'):
    maml.maml(loss_fn).task_loss(meta_params, common.task(tasks, 0), None, settings=InnerSettings(),
                                 gate_mode='sometimes')
  with pytest.raises(ValueError, match='gate_mode'):
    maml.maml(loss_fn).batch_loss(meta_params, tasks, jax.random.key(0), settings=InnerSettings(),
                                  gate_mode='sometimes')
  with pytest.raises(ValueError, match='gate_mode'):
    adapt.masked_params(meta_params, None, 'sometimes', hard_concrete.HardConcrete())


def test_masked_params_multiply_fixed_masks_then_gates():
  meta_params, _, _ = common.mlp_problem()
  params, hc = meta_params['params'], hard_concrete.HardConcrete()
  fixed = jax.tree.map(lambda p: (jax.random.uniform(jax.random.key(4), p.shape) > 0.5).astype(jnp.float32), params)
  gates = hard_concrete.deterministic_gates(meta_params['gate_logits'], hc)
  expected = jax.tree.map(lambda p, f, g: p * f if g is None else p * f * g, params, fixed, gates,
                          is_leaf=lambda x: x is None)
  test_utils.assert_trees_all_close(adapt.masked_params(meta_params, None, 'deterministic', hc, fixed), expected)
  test_utils.assert_trees_all_close(adapt.masked_params(meta_params, None, 'off', hc, fixed),
                                    jax.tree.map(lambda p, f: p * f, params, fixed))


@pytest.mark.parametrize('first_order', [False, True])
def test_weight_space_inner_loop_equals_adapting_the_raw_parameters(first_order):
  """Fixed gates: SGD on ``w = params * m`` with step ``lr * m**2`` is SGD on ``params`` under the mask."""
  meta_params, tasks, loss_fn = common.mlp_problem(hidden=(5,))
  task = common.task(tasks, 0)
  settings = InnerSettings(inner_lr=0.1, num_inner_steps=2, first_order=first_order)
  noise = noise_lib.uniform_tree(meta_params['gate_logits'], jax.random.key(8))

  def query_loss(mp, weight_space):
    adapted, effective = adapt.adapt_task(mp, task, noise, loss_fn, settings, Execution(), 'sample', None,
                                          weight_space=weight_space)
    return loss_fn(effective(adapted), task.query_inputs, task.query_targets)
  ours = jax.value_and_grad(lambda mp: query_loss(mp, True))(meta_params)
  raw = jax.value_and_grad(lambda mp: query_loss(mp, False))(meta_params)
  test_utils.assert_trees_all_close(ours, raw, rtol=1e-4, atol=1e-6)


def test_python_loop_execution_equals_the_scan():
  meta_params, tasks, loss_fn = common.mlp_problem()
  settings, key = InnerSettings(inner_lr=0.05, num_inner_steps=3), jax.random.key(9)
  def run(execution):
    learner = maml.maml(loss_fn, execution=execution)
    return jax.value_and_grad(lambda mp: learner.batch_loss(mp, tasks, key, settings=settings))(meta_params)
  test_utils.assert_trees_all_close(run(Execution(python_loop=True)), run(Execution()), rtol=1e-5, atol=1e-7)


def test_trace_records_the_query_loss_before_and_after_each_step():
  meta_params, tasks, loss_fn = common.mlp_problem()
  task = common.task(tasks, 1)
  settings = InnerSettings(inner_lr=0.05, num_inner_steps=3)
  query = lambda p: loss_fn(p, task.query_inputs, task.query_targets)  # pylint: disable=unnecessary-lambda-assignment
  (adapted, trace), effective = adapt.adapt_task(meta_params, task, None, loss_fn, settings, Execution(),
                                                 'deterministic', query)
  assert trace.shape == (4,)
  hc = settings.hc
  test_utils.assert_close(trace[0], query(adapt.masked_params(meta_params, None, 'deterministic', hc)), rtol=1e-6)
  test_utils.assert_close(trace[-1], query(effective(adapted)), rtol=1e-6)
