"""The learner registry: one contract over every algorithm, then each algorithm's defining property."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metaprune_jax import types
from metaprune_jax.masks import hard_concrete
from metaprune_jax.meta import adapt
from metaprune_jax.meta import gate_source
from metaprune_jax.meta import learners
from metaprune_jax.meta import optimizer as outer_optimizer
from metaprune_jax.meta import protonet
from metaprune_jax.meta import reptile
from metaprune_jax.meta import step as meta_step
from metaprune_jax.meta.settings import Execution
from metaprune_jax.meta.settings import InnerSettings
from metaprune_jax.nets import conv
from tests import test_utils

WAYS, SHOTS, QUERIES, SIZE = 3, 2, 2, 8


def _loss(params, images, labels, reference=None):
  logits = conv.conv4_apply(params, images, method='patches', reference=reference)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def _accuracy(params, images, labels, reference=None):
  logits = conv.conv4_apply(params, images, method='patches', reference=reference)
  return jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))


def _embed(params, images, reference=None):
  return conv.conv4_features(params, images, method='patches', reference=reference)


def _learner(name, execution=Execution(), inductive=False):
  return learners.get_learner(name, loss_fn=_loss, accuracy_fn=_accuracy, embed_fn=_embed, head_keys=('head',),
                              execution=execution, inductive=inductive)


def _params():
  return conv.init_conv4(jax.random.key(0), image_size=SIZE, width=4, depth=2, num_classes=WAYS)


def _tasks(key, num_tasks):
  """Random images; each class has its own mean image, so there is something to learn."""
  k_mean, k_s, k_q, k_perm = jax.random.split(key, 4)
  means = jax.random.uniform(k_mean, (num_tasks, WAYS, SIZE, SIZE, 1))
  labels = jnp.tile(jnp.arange(WAYS), (num_tasks, 1))
  def images(k, n):
    noise = 0.3 * jax.random.normal(k, (num_tasks, WAYS, n, SIZE, SIZE, 1))
    return (means[:, :, None] + noise).reshape(num_tasks, WAYS * n, SIZE, SIZE, 1)
  return types.TaskBatch(images(k_s, SHOTS), jnp.repeat(labels, SHOTS, axis=1),
                         images(k_q, QUERIES), jnp.repeat(labels, QUERIES, axis=1))


def _meta_params(learner, settings, gated=True):
  params = _params()
  gates = hard_concrete.init_gate_logits(params, 'weight', init_logit=0.5) if gated else None
  return {'params': params, 'gate_logits': gates, **learner.init_extra(params, settings)}


def _fixed_masks(params):
  return {k: ({'kernel': (jax.random.uniform(jax.random.key(5), v['kernel'].shape) > 0.5).astype(jnp.float32)}
              if k.startswith('conv') else jax.tree.map(lambda _: None, v)) for k, v in params.items()}


def test_unknown_algorithm_lists_the_valid_ones():
  with pytest.raises(ValueError, match='protonet'):
    _learner('mamll')


def test_registry_builds_every_name_once_per_inputs():
  for name in learners.LEARNERS:
    learner = _learner(name)
    assert learner.name == name
    assert _learner(name) is learner  # Cached: jit caches keyed on the learner hit.
    other = _learner(name, Execution(python_loop=True))
    assert other is not learner and other.execution == Execution(python_loop=True)


def test_protonet_and_anil_need_their_problem_functions():
  with pytest.raises(ValueError, match='embed_fn'):
    learners.get_learner('protonet', loss_fn=_loss)
  with pytest.raises(ValueError, match='head_keys'):
    learners.get_learner('anil', loss_fn=_loss)


@pytest.mark.parametrize('masking', ['gates', 'fixed'])
@pytest.mark.parametrize('name', learners.LEARNERS)
def test_contract_one_jitted_meta_step(name, masking):
  learner = _learner(name)
  settings = InnerSettings(inner_lr=0.1)
  meta_params = _meta_params(learner, settings, gated=masking == 'gates')
  masks = _fixed_masks(meta_params['params']) if masking == 'fixed' else None
  optimizer = outer_optimizer.outer_optimizer({'params': 1e-3, 'gate_logits': 1e-2, 'inner_lrs': 1e-3})
  state = meta_step.init_meta_state(jax.random.key(1), meta_params['params'], meta_params['gate_logits'],
                                    optimizer, masks=masks, extra=learner.init_extra(meta_params['params'], settings))
  counter = test_utils.CompileCounter()
  gates = gate_source.shared_gates() if masking == 'gates' else gate_source.no_gates()
  step = meta_step.compile_step(meta_step.make_meta_step(counter.wrap(_tasks), learner, optimizer, meta_batch_size=2,
                                                         settings=settings, gates=gates))
  for _ in range(2):
    state, metrics = step(state)
  test_utils.assert_all_finite(metrics)
  assert counter.count == 1
  masks = state.masks  # The step donates its input state, masks included.
  grads = jax.grad(lambda mp: learner.batch_loss(mp, _tasks(jax.random.key(3), 2), jax.random.key(4),
                                                 settings=settings, fixed_masks=masks))(state.meta_params)
  assert float(jnp.abs(grads['params']['conv_0']['kernel']).sum()) > 0  # The body learns.
  if masking == 'gates':
    assert float(jnp.abs(grads['gate_logits']['conv_1']['kernel']).sum()) > 0
  else:
    pruned = masks['conv_0']['kernel'] == 0
    test_utils.assert_equal(jnp.where(pruned, grads['params']['conv_0']['kernel'], 0.0), 0.0)
    test_utils.assert_equal(jnp.where(pruned, state.meta_params['params']['conv_0']['kernel'], 0.0), 0.0)
  if name == 'metasgd':
    assert float(jnp.abs(grads['inner_lrs']['conv_0']['kernel']).sum()) > 0
  traces = jax.jit(jax.vmap(lambda t: learner.task_traces(state.meta_params, t, settings=settings,
                                                          gate_mode='deterministic', fixed_masks=masks)))(
      _tasks(jax.random.key(6), 3))
  assert traces['loss'].shape == traces['accuracy'].shape == (3, 2)
  test_utils.assert_all_finite(traces)


def _one_task():
  return jax.tree.map(lambda x: x[0], _tasks(jax.random.key(7), 1))


@pytest.mark.parametrize('name', learners.LEARNERS)
def test_inductive_query_loss_is_the_mean_of_each_query_images_own_loss(name):
  # Inductive batch norm: no query image affects another's prediction, so the query loss (training) and the query
  # metrics (evaluation) of the whole query set are the means over one-image query sets. Transductive ones are not.
  settings, task = InnerSettings(inner_lr=0.1), _one_task()
  num_query = task.query_targets.shape[0]
  singles = [task._replace(query_inputs=task.query_inputs[i:i + 1], query_targets=task.query_targets[i:i + 1])
             for i in range(num_query)]
  for inductive in (True, False):
    learner = _learner(name, inductive=inductive)
    meta_params = _meta_params(learner, settings)
    loss = jax.jit(lambda mp, t, lrn=learner: lrn.task_loss(mp, t, None, settings=settings, gate_mode='off'))
    traces = jax.jit(lambda mp, t, lrn=learner: lrn.task_traces(mp, t, settings=settings))
    whole_loss, single_losses = loss(meta_params, task), [loss(meta_params, t) for t in singles]
    whole_traces = traces(meta_params, task)
    single_traces = [traces(meta_params, t) for t in singles]
    mean_traces = jax.tree.map(lambda *x: jnp.mean(jnp.stack(x), axis=0), *single_traces)
    if inductive:
      test_utils.assert_close(whole_loss, np.mean(single_losses), rtol=1e-5, atol=1e-6)
      test_utils.assert_trees_all_close(whole_traces, mean_traces, rtol=1e-5, atol=1e-6)
    else:
      assert not np.allclose(whole_loss, np.mean(single_losses), rtol=1e-3)
      assert not np.allclose(whole_traces['loss'], mean_traces['loss'], rtol=1e-3)


def test_fomaml_gradient_equals_the_stop_gradient_reference():
  learner, settings = _learner('fomaml'), InnerSettings(inner_lr=0.1)
  params, task = _params(), _one_task()
  got = jax.jit(jax.grad(lambda p: learner.task_loss({'params': p, 'gate_logits': None}, task, None,
                                                     settings=settings, gate_mode='off')))(params)

  def reference(p):
    g = jax.lax.stop_gradient(jax.grad(_loss)(p, task.support_inputs, task.support_targets))
    return _loss(jax.tree.map(lambda w, d: w - 0.1 * d, p, g), task.query_inputs, task.query_targets)
  test_utils.assert_trees_all_close(got, jax.jit(jax.grad(reference))(params), rtol=1e-5, atol=1e-7)
  second = jax.jit(jax.grad(lambda p: _learner('maml').task_loss({'params': p, 'gate_logits': None}, task, None,
                                                                settings=settings, gate_mode='off')))(params)
  assert not np.allclose(second['conv_0']['kernel'], got['conv_0']['kernel'], rtol=1e-4)


def test_anil_adapts_only_the_head_but_the_body_gets_outer_gradients():
  settings, task = InnerSettings(inner_lr=0.5, num_inner_steps=2), _one_task()
  meta_params = {'params': _params(), 'gate_logits': None}
  adapted, effective = adapt.adapt_task(meta_params, task, None, _loss, settings, Execution(), 'off', None, None,
                                        ('head',))
  assert set(adapted) == {'head'}
  full = effective(adapted)
  for key in meta_params['params']:
    same = key != 'head'
    for a, b in zip(jax.tree.leaves(full[key]), jax.tree.leaves(meta_params['params'][key])):
      assert np.array_equal(a, b) == same, key
  grads = jax.grad(lambda mp: _learner('anil').task_loss(mp, task, None, settings=settings, gate_mode='off'))(
      meta_params)
  assert float(jnp.abs(grads['params']['conv_0']['kernel']).sum()) > 0


def test_metasgd_uses_its_learned_rates():
  learner, settings, task = _learner('metasgd'), InnerSettings(inner_lr=0.1), _one_task()
  meta_params = _meta_params(learner, settings, gated=False)
  frozen = {**meta_params, 'inner_lrs': jax.tree.map(jnp.zeros_like, meta_params['inner_lrs'])}
  before = _loss(meta_params['params'], task.query_inputs, task.query_targets)
  test_utils.assert_close(learner.task_loss(frozen, task, None, settings=settings, gate_mode='off'), before)
  plain = _learner('maml').task_loss(meta_params, task, None, settings=settings, gate_mode='off')
  test_utils.assert_close(learner.task_loss(meta_params, task, None, settings=settings, gate_mode='off'), plain)


def test_reptile_direction_is_theta_minus_adapted():
  settings, task = InnerSettings(inner_lr=0.3, num_inner_steps=3), _one_task()
  meta_params = {'params': _params(), 'gate_logits': None}
  loss, grads = jax.jit(jax.value_and_grad(
      lambda mp: _learner('reptile').task_loss(mp, task, None, settings=settings, gate_mode='off')))(meta_params)
  adapted, _ = adapt.adapt_task(meta_params, task, None, _loss, settings._replace(first_order=True), Execution(),
                                'off', None)
  expected = jax.tree.map(lambda t, a: t - a, meta_params['params'], adapted)
  test_utils.assert_trees_all_close(grads['params'], expected, rtol=1e-5, atol=1e-7)
  test_utils.assert_close(loss, _loss(adapted, task.query_inputs, task.query_targets), rtol=1e-6)
  test_utils.assert_equal(reptile.pull(meta_params['params'], adapted), 0.0)


def test_protonet_separable_embeddings_are_classified_perfectly():
  centres = 10.0 * jnp.eye(4)[:3]                               # 3 classes in 4-d.
  key_s, key_q = jax.random.split(jax.random.key(0))
  support_labels = jnp.array([0, 0, 1, 1, 2, 2])
  query_labels = jnp.array([2, 1, 0, 0, 1, 2, 2])
  task = types.TaskBatch(centres[support_labels] + 0.1 * jax.random.normal(key_s, (6, 4)), support_labels,
                         centres[query_labels] + 0.1 * jax.random.normal(key_q, (7, 4)), query_labels)
  learner = learners.get_learner('protonet', loss_fn=_loss, embed_fn=lambda p, x: x * p['w'])
  traces = learner.task_traces({'params': {'w': jnp.ones(4)}, 'gate_logits': None}, task,
                               settings=InnerSettings(num_inner_steps=2), gate_mode='off')
  test_utils.assert_equal(traces['accuracy'], jnp.ones(3))
  assert float(traces['loss'][0]) < 1e-3
  logits = protonet.prototype_logits(task.support_inputs, support_labels, task.query_inputs)
  assert logits.shape == (7, 6)
  test_utils.assert_equal(logits[:, 3:] < -1e29, True)  # Empty slots never win.


@pytest.mark.parametrize('name,scope', [('maml', 'task'), ('protonet', 'task'), ('maml', 'batch')])
def test_chunked_meta_batch_equals_one_vmap(name, scope):
  learner = _learner(name, Execution(gate_sample_scope=scope))
  settings = InnerSettings(inner_lr=0.1)
  meta_params = _meta_params(learner, settings)
  tasks, key = _tasks(jax.random.key(8), 4), jax.random.key(9)
  # Jitted: one compilation each instead of an eager, op-by-op backward pass (the same functions, faster cold).
  whole = jax.jit(jax.value_and_grad(lambda mp: learner.batch_loss(mp, tasks, key, settings=settings)))(meta_params)
  chunked_learner = _learner(name, Execution(gate_sample_scope=scope, task_chunk_size=2))
  chunked = jax.jit(jax.value_and_grad(lambda mp: chunked_learner.batch_loss(mp, tasks, key, settings=settings)))(
      meta_params)
  test_utils.assert_trees_all_close(chunked, whole, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match='task_chunk_size=3'):
    _learner(name, Execution(gate_sample_scope=scope, task_chunk_size=3)).batch_loss(meta_params, tasks, key,
                                                                                      settings=settings)
