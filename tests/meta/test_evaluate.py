"""Evaluation statistics: CI, median, divergence accounting; traces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprune_jax import losses
from metaprune_jax.masks import hard_concrete
from metaprune_jax.meta import evaluate
from metaprune_jax.meta import maml
from metaprune_jax.meta.settings import InnerSettings
from metaprune_jax.nets import mlp
from metaprune_jax.tasks import sinusoid
from tests import test_utils


def test_summarise_matches_hand_computation():
  values = np.array([1.0, 2.0, 3.0, 4.0])
  s = evaluate.summarise(values)
  test_utils.assert_close(s['mean'], 2.5)
  test_utils.assert_close(s['ci95'], 1.96 * np.std(values, ddof=1) / 2.0)
  assert s['median'] == 2.5 and s['num_diverged'] == 0 and s['num_tasks'] == 4


def test_diverged_tasks_are_counted_not_averaged():
  values = np.array([1.0, np.nan, np.inf, 5e3, 3.0, 40.0])
  before = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 2.0])
  s = evaluate.summarise(values, before, divergence_threshold=1e3, divergence_ratio=10.0)
  assert s['num_diverged'] == 4  # nan, inf, above threshold, 20x worse than before.
  test_utils.assert_close(s['mean'], 2.0)
  assert np.isfinite(s['median']) and not np.isfinite(s['mean_all'])


def test_common_summary_averages_both_models_over_the_tasks_neither_diverged_on():
  # Model a diverges on task 1 (nan), model b on task 3 (> 10x its loss before adapting): summarise drops a
  # different task from each mean; summarise_common drops both from both.
  a = np.array([1.0, np.nan, 3.0, 4.0, 5.0])
  b = np.array([2.0, 2.0, 2.0, 40.0, 2.0])
  before = np.array([3.0, 3.0, 3.0, 3.0, 3.0])
  assert evaluate.summarise(a, before)['mean'] == np.mean([1.0, 3.0, 4.0, 5.0])
  assert evaluate.summarise(b, before)['mean'] == np.mean([2.0, 2.0, 2.0, 2.0])
  common = evaluate.summarise_common({'a': a, 'b': b}, {'a': before, 'b': before})
  assert common['a']['mean'] == np.mean([1.0, 3.0, 5.0]) and common['b']['mean'] == 2.0
  test_utils.assert_close(common['a']['ci95'], 1.96 * np.std([1.0, 3.0, 5.0], ddof=1) / np.sqrt(3))
  assert common['b']['ci95'] == 0.0
  assert [common[m]['num_common'] for m in 'ab'] == [3, 3] and [common[m]['num_tasks'] for m in 'ab'] == [5, 5]
  assert common['a']['num_diverged'] == 1 and common['b']['num_diverged'] == 1  # Each model's own count.
  # Without losses before adapting only the threshold and non-finite values count: b's 40.0 stays in.
  unpaired = evaluate.summarise_common({'a': a, 'b': b})
  assert unpaired['b']['num_common'] == 4 and unpaired['b']['mean'] == np.mean([2.0, 2.0, 40.0, 2.0])
  with pytest.raises(ValueError, match='same tasks'):
    evaluate.summarise_common({'a': a, 'b': b[:4]})


def test_traces_start_at_the_unadapted_loss_and_chunks_agree():
  model = mlp.make_mlp((8,), 1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']
  meta_params = {'params': params, 'gate_logits': hard_concrete.init_gate_logits(params, 'weight')}
  tasks = sinusoid.sample_sinusoid_tasks(jax.random.key(1), num_tasks=7, num_support=5, num_query=9)
  loss_fn = losses.mse_loss(model.apply)
  settings = InnerSettings(inner_lr=0.01, num_inner_steps=3)
  learner = maml.maml(loss_fn)
  out = evaluate.learner_traces(learner, meta_params, tasks, settings=settings, chunk_size=3)
  assert set(out) == {'loss'} and out['loss'].dtype == np.float64
  traces = out['loss']
  assert traces.shape == (7, 4)
  whole = evaluate.learner_traces(learner, meta_params, tasks, settings=settings, chunk_size=100)['loss']
  test_utils.assert_close(traces, whole, rtol=1e-5)
  for i in (0, 6):  # Each row is that task's own trace.
    test_utils.assert_close(traces[i], learner.task_traces(meta_params, jax.tree.map(lambda x, i=i: x[i], tasks),
                                                           settings=settings)['loss'], rtol=1e-5)
  unadapted = [float(loss_fn(params, tasks.query_inputs[i], tasks.query_targets[i])) for i in range(7)]
  test_utils.assert_close(traces[:, 0], unadapted, rtol=1e-5)  # init_logit 3: gates exactly 1.
  summary = evaluate.summarise_traces(traces, [0, 3])
  assert set(summary) == {'step_0', 'step_3'}
  off = evaluate.learner_traces(learner, meta_params, tasks, settings=settings, gate_mode='off')['loss']
  test_utils.assert_close(off, traces, rtol=1e-5)  # Gates exactly 1: the dense model.
  with pytest.raises(ValueError, match='fixed gates'):
    evaluate.learner_traces(learner, meta_params, tasks, settings=settings, gate_mode='sample')
