"""Non-finite guards: a NaN injected at a known meta-step is caught (stop) or dropped and counted (skip)."""

import json

import jax
import jax.numpy as jnp
import pytest

from metaprune_jax import checkpoint
from experiments import build
from experiments import problems
from experiments import train
from experiments.configs import smoke
from metaprune_jax.masks import hard_concrete
from metaprune_jax.meta import gate_source
from metaprune_jax.meta import guards
from metaprune_jax.meta import learners
from metaprune_jax.meta import optimizer as outer_optimizer
from metaprune_jax.meta import step as meta_step
from metaprune_jax.meta.settings import InnerSettings
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
  config.task.name = 'nan_sinusoid'
  config.run.checkpoint_every_steps = 10
  return config


def test_nan_at_a_known_step_stops_the_run_naming_it(tmp_path, nan_config):
  with pytest.raises(FloatingPointError, match=f'meta-step {BAD_STEP}; the last good checkpoint is '
                                               f'{tmp_path}/checkpoints/10 .*--config.run.nonfinite=skip'):
    train.run(nan_config, str(tmp_path))
  test_utils.assert_equal([s for s, _ in checkpoint.list_checkpoints(str(tmp_path))], [10])


def test_nan_at_a_known_step_is_skipped_and_counted(tmp_path, nan_config):
  nan_config.run.nonfinite = 'skip'
  summary = train.run(nan_config, str(tmp_path))
  with open(tmp_path / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  test_utils.assert_equal([r['outer/skipped_steps'] for r in records], [0, 1, 1])
  test_utils.assert_equal(summary['timings']['skipped_steps'], 1)
  test_utils.assert_all_finite(checkpoint.restore_latest(build.build(nan_config).init_state(),
                                                         str(tmp_path)).meta_params)


def test_skipped_update_leaves_params_and_optimizer_untouched_but_advances_step_and_key(nan_config):
  problem = _nan_problem(nan_config)
  init_key, train_key = jax.random.split(jax.random.key(nan_config.seed))  # As build.initial_state splits it.
  params = problem.init_params(init_key)
  optimizer = outer_optimizer.outer_optimizer({'params': 1e-3, 'gate_logits': 1e-2})
  state = meta_step.init_meta_state(train_key, params, hard_concrete.init_gate_logits(params, 'weight'), optimizer)
  learner = learners.get_learner('maml', loss_fn=problem.loss_fn)
  step_fn = meta_step.compile_step(
      meta_step.make_meta_step(problem.train_sampler, learner, optimizer,
                               meta_batch_size=int(nan_config.outer.meta_batch_size), settings=InnerSettings(),
                               gates=gate_source.shared_gates()),
      nonfinite='skip', donate=False)
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


def test_keep_finite_update_selects_per_flag():
  old = meta_step.MetaState({'params': jnp.zeros(2)}, (jnp.zeros(2),), jnp.float32(0.0), jnp.int32(0),
                            jax.random.key(0))
  new = meta_step.MetaState({'params': jnp.ones(2)}, (jnp.ones(2),), jnp.float32(1.0), jnp.int32(1),
                            jax.random.key(1))
  kept = guards.keep_finite_update(jnp.bool_(False), new, old)
  test_utils.assert_trees_all_equal((kept.meta_params, kept.opt_state, kept.multiplier, kept.step),
                                    (old.meta_params, old.opt_state, old.multiplier, new.step))
  taken = guards.keep_finite_update(jnp.bool_(True), new, old)
  test_utils.assert_trees_all_equal((taken.meta_params, taken.opt_state, taken.multiplier),
                                    (new.meta_params, new.opt_state, new.multiplier))


def test_all_finite_sees_a_nan_in_any_leaf():
  grads = {'a': jnp.ones(3), 'b': {'c': jnp.array([1.0, jnp.inf])}}
  assert not bool(guards.all_finite(jnp.float32(1.0), grads))
  assert not bool(guards.all_finite(jnp.float32(jnp.nan), {'a': jnp.ones(3)}))
  assert bool(guards.all_finite(jnp.float32(1.0), {'a': jnp.ones(3)}))


def test_unknown_nonfinite_mode_names_the_allowed_values():
  config = smoke.get_config()
  config.run.nonfinite = 'ignore'
  with pytest.raises(ValueError, match=r"--config.run.nonfinite='ignore' is invalid: use one of \('stop', 'skip'\)"):
    build.check(config)
