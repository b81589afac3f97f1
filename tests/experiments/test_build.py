"""``build(config) -> Experiment``: the one build path (learner, gates, checks, steps, loading a run)."""

import os

import jax
import ml_collections
import pytest

from experiments import baselines
from experiments import build
from experiments import config_check
from experiments import train
from experiments.configs import omniglot_tiny
from experiments.configs import smoke
from metaprune_jax import checkpoint
from metaprune_jax.meta import learners
from tests import shared_data
from tests import test_utils


def _smoke(**fields):
  """The smoke config with ``{'section__field' (or a top-level field): value}`` overrides."""
  config = smoke.get_config()
  for path, value in fields.items():
    if '__' in path:
      section, field = path.split('__')
      config[section][field] = value
    else:
      config[path] = value
  return config


@pytest.mark.parametrize('algorithm', [a for a in learners.LEARNERS if a != 'protonet'])
def test_learner_follows_the_configured_algorithm(algorithm):
  exp = build.build(_smoke(algorithm=algorithm))
  assert exp.learner.name == algorithm and exp.eval_learner.name == algorithm
  assert not exp.eval_learner.execution.python_loop  # Evaluation always scans the inner loop.
  assert exp.learner.execution == exp.execution == build.execution_settings(exp.config)
  assert exp.settings == build.inner_settings(exp.config)
  assert exp.eval_settings.num_inner_steps == max(exp.config.eval.steps) == 2
  assert exp.eval_settings.inner_lr == exp.config.eval.inner_lr
  extra = exp.init_state().meta_params
  assert ('inner_lrs' in extra) == (algorithm == 'metasgd')  # Meta-SGD's learned inner learning rates.


def test_protonet_on_a_task_without_an_embedding_is_a_clear_error():
  with pytest.raises(ValueError, match="algorithm 'protonet' needs an embedding"):
    build.build(_smoke(algorithm='protonet'))


@pytest.mark.skipif(not os.path.isdir(shared_data.OMNIGLOT_DIR), reason='shared Omniglot data missing')
def test_protonet_builds_on_omniglot():
  config = omniglot_tiny.get_config()
  config.task.data_dir = shared_data.OMNIGLOT_DIR
  config.task.cache_dir = ''
  config.algorithm = 'protonet'
  exp = build.build(config)
  assert exp.learner.name == 'protonet' and exp.eval_learner.name == 'protonet'
  assert exp.problem.embed_fn is not None and exp.problem.metric == 'accuracy'


@pytest.mark.parametrize('mask', ['none', 'hard_concrete', 'meta_pruner'])
def test_gate_source_follows_the_mask(mask):
  exp = build.build(_smoke(gates__mask=mask, gates__meta_pruner_hidden_sizes=(8,), gates__meta_pruner_embed_dim=4))
  assert exp.gates.name == mask
  meta_params = exp.init_state().meta_params
  assert (meta_params['gate_logits'] is None) == (mask == 'none')
  assert ('meta_pruner' in meta_params) == (mask == 'meta_pruner')
  # The meta-pruner wraps the learner per task; the other sources leave it as the algorithm built it.
  assert exp.learner.name == ('maml+meta_pruner' if mask == 'meta_pruner' else 'maml')
  assert exp.harden_step == (None if mask == 'none' else round(0.8 * 30))


def test_counting_gates_hardens_the_conv4_to_that_fraction_of_its_channels():
  config = omniglot_tiny.get_config()  # Conv-2 of width 8 on 16x16 images: 8 filters of 9 and 8 of 72 weights.
  config.task.data_dir = shared_data.OMNIGLOT_DIR
  config.task.cache_dir = ''
  config.algorithm = 'protonet'
  config.gates.mask = 'hard_concrete'
  config.gates.granularity = 'out_unit'
  config.sparsity.count = 'gates'
  config.sparsity.target_sparsity = 0.5
  exp = build.build(config)
  state = exp.init_state()
  logits = state.meta_params['gate_logits']  # Low logits in the small first block: gates pick it first.
  logits['conv_0']['kernel'] = logits['conv_0']['kernel'] - jax.numpy.arange(8.0)
  hardened = exp.gates.harden({**state.meta_params, 'gate_logits': logits})
  report = exp.sparsity_report(hardened)
  assert report['gate_sparsity'] == 0.5  # 8 of the 16 channels closed ...
  closed = jax.tree.map(lambda g: int((g < 0).sum()), hardened['gate_logits'])
  assert closed['conv_0']['kernel'] == 7 and closed['conv_1']['kernel'] == 1  # ... 7 + 1 of them, lowest first,
  test_utils.assert_close(report['realised_sparsity'], (7 * 9 + 1 * 72) / (8 * 9 + 8 * 72))  # far below 50% of weights.
  config.sparsity.harden_scope = 'layerwise'  # Each conv layer to 50% of its channels: 4 + 4.
  closed = jax.tree.map(lambda g: int((g < 0).sum()),
                        build.build(config).gates.harden({**state.meta_params, 'gate_logits': logits})['gate_logits'])
  assert closed['conv_0']['kernel'] == 4 and closed['conv_1']['kernel'] == 4
  for mask, granularity in (('meta_pruner', 'out_unit'), ('hard_concrete', 'hidden_unit')):
    for field in ('count', 'harden_scope'):
      bad = ml_collections.ConfigDict(config.to_dict())
      bad.gates.mask, bad.gates.granularity = mask, granularity
      bad.sparsity.count, bad.sparsity.harden_scope = 'weights', 'global'
      bad.sparsity[field] = config.sparsity[field]
      with pytest.raises(ValueError, match=f'--config.sparsity.{field}'):
        build.check(bad)


@pytest.mark.parametrize('path,value,match', [
    ('outer.outer_lr', float('inf'), '--config.outer.outer_lr=inf is invalid: must be a finite number > 0'),
    ('eval.divergence_ratio', 1, '--config.eval.divergence_ratio=1.0 is invalid: must be > 1'),  # A float field.
    ('run.nonfinite', 'x', "--config.run.nonfinite='x' is invalid: use one of"),
    ('pruning.prune_distribution', 'erk', "--config.pruning.prune_distribution='erk' is invalid"),
    ('sparsity.target_sparsity', 1.0, '--config.sparsity.target_sparsity'),
    ('algorithm', 'maml2', "--config.algorithm='maml2' is invalid: use one of"),
    ('sparsity.count', 'channels', "--config.sparsity.count='channels' is invalid: use one of"),
])
def test_check_names_the_dotted_field(path, value, match):
  config = smoke.get_config()
  assert config.pruning.prune_scope == 'global'  # ERK needs layerwise top-k.
  if '.' in path:
    section, field = path.split('.')
    config[section][field] = value
  else:
    config[path] = value
  with pytest.raises(ValueError, match=match.replace('(', r'\(')):
    build.check(config)
  with pytest.raises(ValueError, match=match.replace('(', r'\(')):
    build.build(config)  # build checks first.


def test_misspelled_field_names_the_closest_path():
  as_dict = smoke.get_config().to_dict()
  as_dict['gates']['maks'] = 'none'
  with pytest.raises(config_check.ConfigError,
                     match='--config.gates.maks is not a config field; did you mean --config.gates.mask?'):
    build.check(ml_collections.ConfigDict(as_dict))


def test_check_reads_no_data(tmp_path):
  config = omniglot_tiny.get_config()
  config.task.data_dir = str(tmp_path / 'nowhere')
  build.check(config)  # Field rules only; the missing folder is the problem's error, at build.
  with pytest.raises(FileNotFoundError, match='--config.task.data_dir='):
    build.build(config)


@pytest.mark.parametrize('algorithm', ['fomaml', 'reptile'])
def test_baselines_build_a_dense_experiment_with_the_configured_algorithm(algorithm):
  config = _smoke(algorithm=algorithm)
  exp = baselines.dense_experiment(config)
  assert exp.learner.name == algorithm and exp.eval_learner.name == algorithm
  assert exp.gates.name == 'none' and exp.config.gates.mask == 'none' and exp.harden_step is None
  assert exp.init_state().meta_params['gate_logits'] is None
  assert config.gates.mask == 'hard_concrete'  # The caller's config is not changed.


@pytest.mark.parametrize('mask', ['hard_concrete', 'none'])
def test_five_single_steps_equal_one_five_step_call(mask):
  exp = build.build(_smoke(gates__mask=mask))
  one, five = exp.make_step(1), exp.make_step(5)
  state = exp.init_state()
  losses = []
  for _ in range(5):
    state, metrics = one(state)
    losses.append(float(metrics['outer/query_loss']))
  scanned, stacked = five(exp.init_state())
  assert int(scanned.step) == int(state.step) == 5
  assert stacked['outer/query_loss'].shape == (5,)
  test_utils.assert_close(stacked['outer/query_loss'], losses, rtol=1e-5, atol=1e-6)
  test_utils.assert_trees_all_close(scanned._replace(key=None), state._replace(key=None), rtol=1e-5, atol=1e-6)
  test_utils.assert_equal(jax.random.key_data(scanned.key), jax.random.key_data(state.key))


def test_load_restores_a_finished_run_exactly(tmp_path):
  config = smoke.get_config()
  config.outer.num_outer_steps = 10
  train.run(config, str(tmp_path))
  exp, state = build.load(str(tmp_path))
  assert int(state.step) == 10
  assert config_check.leaf_paths(exp.config) == {
      k: list(v) if isinstance(v, tuple) else v for k, v in config_check.leaf_paths(config).items()}
  test_utils.assert_trees_all_equal(state.meta_params, checkpoint.load_run(str(tmp_path)).meta_params)
  # The same meta-params as meta-training the same config again, one step per call as train.run did.
  fresh = build.build(config)
  replay, step = fresh.init_state(), fresh.make_step(1)
  for _ in range(10):
    replay, _ = step(replay)
  test_utils.assert_trees_all_equal(state.meta_params, replay.meta_params)
  assert exp.evaluate(state.meta_params) == fresh.evaluate(replay.meta_params)


def test_inert_fields_at_their_inert_value_drop_out_of_a_config_hash():
  # A config saved before the INERT_VALUES fields existed hashes like today's config at their inert values.
  config = smoke.get_config()
  leaves = config_check.leaf_paths(config)
  old = {path: value for path, value in leaves.items() if path not in config_check.INERT_VALUES}
  assert set(config_check.INERT_VALUES) <= set(leaves)
  assert config_check.inert_fields_dropped(leaves) == old
  config.num_seeds = 2
  assert config_check.inert_fields_dropped(config_check.leaf_paths(config))['num_seeds'] == 2
  config.num_seeds, config.outer.reptile_update, config.outer.reptile_step_size = 1, 'interpolate', 0.5
  kept = config_check.inert_fields_dropped(config_check.leaf_paths(config))
  assert kept['outer.reptile_update'] == 'interpolate' and kept['outer.reptile_step_size'] == 0.5
  assert 'outer.reptile_step_size_final' not in kept  # At its inert value.
