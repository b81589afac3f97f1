"""Non-finite guards: a NaN injected at a known meta-step is caught (stop) or dropped and counted (skip)."""

import json
import os

import jax
import jax.numpy as jnp
import pytest

from experiments import checkpoint
from experiments import problems
from experiments import train
from experiments.configs import smoke
from metaprune_jax.meta import guards
from metaprune_jax.meta import step as meta_step
from tests import test_utils

BAD_STEP = 13  # 1-based meta-step whose query targets are NaN.


def _task_key_at(config, step):
  """The task key the meta-step ``step`` (1-based) draws: replays ``init_state``'s and the step's key splits."""
  _, key = jax.random.split(jax.random.key(config.seed))
  for _ in range(step - 1):
    key, _, _ = jax.random.split(key, 3)
  return jax.random.split(key, 3)[1]


def _nan_problem(config):
  base = problems.sinusoid_problem(config)
  bad = jax.random.key_data(_task_key_at(config, BAD_STEP))

  def train_sampler(key, num_tasks):
    tasks = base.train_sampler(key, num_tasks)
    hit = jnp.all(jax.random.key_data(key) == bad)
    return tasks._replace(query_targets=jnp.where(hit, jnp.nan, tasks.query_targets))
  return base._replace(train_sampler=train_sampler)


@pytest.fixture
def nan_config(monkeypatch):
  monkeypatch.setitem(problems.PROBLEMS, 'nan_sinusoid', _nan_problem)
  config = smoke.get_config()
  config.task = 'nan_sinusoid'
  config.checkpoint_every_steps = 10
  return config


def test_nan_at_a_known_step_stops_the_run_naming_it(tmp_path, nan_config):
  with pytest.raises(FloatingPointError, match=f'meta-step {BAD_STEP}; the last good checkpoint is '
                                               f'{tmp_path}/checkpoints/10 .*--config.nonfinite=skip'):
    train.run(nan_config, str(tmp_path))
  test_utils.assert_equal([s for s, _ in checkpoint.list_checkpoints(str(tmp_path))], [10])


def test_nan_at_a_known_step_is_skipped_and_counted(tmp_path, nan_config):
  nan_config.nonfinite = 'skip'
  summary = train.run(nan_config, str(tmp_path))
  with open(tmp_path / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  test_utils.assert_equal([r['outer/skipped_steps'] for r in records], [0, 1, 1])
  test_utils.assert_equal(summary['timings']['skipped_steps'], 1)
  test_utils.assert_all_finite(checkpoint.restore_latest(train.init_state(nan_config, _nan_problem(nan_config))[0],
                                                         str(tmp_path)).meta_params)


def test_skipped_update_leaves_params_and_optimizer_untouched_but_advances_step_and_key(nan_config):
  problem = _nan_problem(nan_config)
  state, optimizer = train.init_state(nan_config, problem)
  step_fn = meta_step.make_meta_step(problem.train_sampler, problem.loss_fn, optimizer,
                                     meta_batch_size=nan_config.meta_batch_size,
                                     settings=train.inner_settings(nan_config), nonfinite='skip', donate=False)
  flags = []
  for _ in range(BAD_STEP - 1):
    state, metrics = step_fn(state)
    flags.append(float(metrics['outer/nonfinite']))
  after, metrics = step_fn(state)
  test_utils.assert_equal(flags, [0.0] * (BAD_STEP - 1))
  test_utils.assert_equal(metrics['outer/nonfinite'], 1.0)
  test_utils.assert_trees_all_equal((after.meta_params, after.opt_state, after.multiplier),
                                    (state.meta_params, state.opt_state, state.multiplier))
  test_utils.assert_equal(after.step, state.step + 1)
  assert not bool(jnp.all(jax.random.key_data(after.key) == jax.random.key_data(state.key)))


def test_all_finite_sees_a_nan_in_any_leaf():
  grads = {'a': jnp.ones(3), 'b': {'c': jnp.array([1.0, jnp.inf])}}
  assert not bool(guards.all_finite(jnp.float32(1.0), grads))
  assert not bool(guards.all_finite(jnp.float32(jnp.nan), {'a': jnp.ones(3)}))
  assert bool(guards.all_finite(jnp.float32(1.0), {'a': jnp.ones(3)}))


def test_unknown_nonfinite_mode_names_the_allowed_values():
  config = smoke.get_config()
  config.nonfinite = 'ignore'
  with pytest.raises(ValueError, match=r"--config.nonfinite='ignore' is invalid: use one of \('stop', 'skip'\)"):
    train.validate_config(config)
