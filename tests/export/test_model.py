"""``export.model``: export_compact -> load_compact round trips, predictions equal the masked learner's."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metaprune_jax.export import artifact
from metaprune_jax.export import model as model_lib
from metaprune_jax.masks import masking
from metaprune_jax.meta import adapt
from metaprune_jax.meta import protonet
from metaprune_jax.meta import settings as settings_lib
from metaprune_jax.nets import conv
from metaprune_jax.nets import mlp

MLP_SPEC = {'arch': 'mlp', 'activation': 'relu', 'learner': 'maml', 'loss': 'mse', 'inner_lr': 0.05,
            'num_inner_steps': 3, 'adapt_keys': None}


def _mlp(seed=0, density=0.1):
  rng = np.random.default_rng(seed)
  model = mlp.make_mlp((40, 40), 1)
  params = jax.tree.map(np.asarray, model.init(jax.random.key(seed), jnp.zeros((1, 1)))['params'])
  masks = {name: {'kernel': (rng.random(leaf['kernel'].shape) < density).astype(np.float32), 'bias': None}
           for name, leaf in params.items()}
  return model, params, masks


def _task(seed, support=5, query=10):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-5, 5, (support + query, 1)).astype(np.float32)
  y = (2.0 * np.sin(x + 0.5)).astype(np.float32)
  return x[:support], y[:support], x[support:], y[support:]


def test_sparse_mlp_export_is_small_and_exact(tmp_path):
  model, params, masks = _mlp()
  document = model_lib.export_compact(str(tmp_path), MLP_SPEC, params, masks)
  assert document['dense_bytes'] == 4 * 1761 and document['total_params'] == 1761
  assert document['artifact_bytes'] == os.path.getsize(tmp_path / artifact.ARRAYS_FILE)
  assert document['metadata_bytes'] == os.path.getsize(tmp_path / artifact.METADATA_FILE)
  assert document['artifact_bytes'] <= 0.25 * document['dense_bytes']
  loaded = model_lib.load_compact(str(tmp_path))
  x = jnp.linspace(-5, 5, 100, dtype=jnp.float32)[:, None]
  expected = model.apply({'params': masking.apply_masks(params, masks)}, x)
  np.testing.assert_allclose(loaded.apply(loaded.params, x), expected, atol=1e-5)


@pytest.mark.parametrize('learner', ['maml', 'anil', 'meta_sgd'])
def test_predict_equals_the_masked_models_adaptation(tmp_path, learner):
  model, params, masks = _mlp(1, density=0.3)
  spec = {**MLP_SPEC, 'learner': learner, 'adapt_keys': ['Dense_2'] if learner == 'anil' else None}
  inner_lrs = (jax.tree.map(lambda p: np.full(p.shape, 0.03, np.float32) * (1 + np.arange(p.size).reshape(p.shape)
                                                                            % 3), params)
               if learner == 'meta_sgd' else None)
  model_lib.export_compact(str(tmp_path), spec, params, masks, inner_lrs=inner_lrs)
  loaded = model_lib.load_compact(str(tmp_path))
  loss = lambda p, x, y: jnp.mean((model.apply({'params': p}, x) - y) ** 2)
  meta_params = {'params': params, 'gate_logits': None, **({'inner_lrs': inner_lrs} if inner_lrs else {})}
  settings = settings_lib.InnerSettings(inner_lr=spec['inner_lr'], num_inner_steps=spec['num_inner_steps'])
  for seed in range(3):
    xs, ys, xq, _ = _task(seed)
    task = type('Task', (), {'support_inputs': xs, 'support_targets': ys})
    fast, effective = adapt.adapt_task(meta_params, task, None, loss, settings, settings_lib.Execution(), 'off',
                                       None, fixed_masks=masks, adapt_keys=spec['adapt_keys'])
    expected = model.apply({'params': effective(fast)}, xq)
    np.testing.assert_allclose(loaded.predict(xs, ys, xq), expected, atol=1e-5)


def test_protonet_conv4_export_predicts_the_masked_prototype_logits(tmp_path):
  rng = np.random.default_rng(0)
  params = jax.tree.map(np.asarray, conv.init_conv4(jax.random.key(0), image_size=16, width=8, depth=3,
                                                    num_classes=5))
  masks = {name: {leaf: None for leaf in value} for name, value in params.items()}
  for i in range(3):
    params[f'norm_{i}']['offset'] = rng.normal(size=8).astype(np.float32)
    masks[f'conv_{i}']['kernel'] = (rng.random(8) < 0.5).astype(np.float32)
  spec = {'arch': 'conv4', 'image_size': 16, 'learner': 'protonet', 'loss': 'cross_entropy', 'inner_lr': 0.0,
          'num_inner_steps': 0, 'adapt_keys': None}
  document = model_lib.export_compact(str(tmp_path), spec, params, masks)
  assert document['compact_params'] < document['total_params'] / 2
  loaded = model_lib.load_compact(str(tmp_path))
  images = jnp.asarray(rng.random((9, 16, 16, 1)), jnp.float32)
  labels = jnp.array([0, 1, 2] * 3)
  embed = lambda x: conv.conv4_features(params, x, masks, method='conv')
  expected = protonet.prototype_logits(embed(images), labels, embed(images[::-1]))
  np.testing.assert_allclose(loaded.predict(images, labels, images[::-1]), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('learner', ['protonet', 'maml'])
def test_inductive_predict_equals_the_masked_model_with_support_statistics(tmp_path, learner):
  rng = np.random.default_rng(1)
  params = jax.tree.map(np.asarray, conv.init_conv4(jax.random.key(1), image_size=8, width=6, depth=2,
                                                    num_classes=3))
  masks = {name: {leaf: None for leaf in value} for name, value in params.items()}
  for i in range(2):
    params[f'norm_{i}']['offset'] = rng.normal(size=6).astype(np.float32)
    masks[f'conv_{i}']['kernel'] = (rng.random((3, 3, params[f'conv_{i}']['kernel'].shape[2], 6)) < 0.6).astype(
        np.float32)
  spec = {'arch': 'conv4', 'image_size': 8, 'learner': learner, 'loss': 'cross_entropy', 'inner_lr': 0.3,
          'num_inner_steps': 2, 'adapt_keys': None, 'conv_method': 'patches', 'bn_mode': 'inductive'}
  model_lib.export_compact(str(tmp_path), spec, params, masks)
  loaded = model_lib.load_compact(str(tmp_path))
  support = jnp.asarray(rng.random((6, 8, 8, 1)), jnp.float32)
  labels = jnp.array([0, 1, 2] * 2)
  query = jnp.asarray(rng.random((4, 8, 8, 1)), jnp.float32)
  if learner == 'protonet':
    embed = lambda x, **kw: conv.conv4_features(params, x, masks, method='conv', **kw)  # pylint: disable=unnecessary-lambda-assignment
    expected = protonet.prototype_logits(embed(support), labels, embed(query, reference=support))
  else:
    settings = settings_lib.InnerSettings(inner_lr=spec['inner_lr'], num_inner_steps=spec['num_inner_steps'])
    loss = lambda p, x, y: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(  # pylint: disable=unnecessary-lambda-assignment
        conv.conv4_apply(p, x, method='conv'), y))
    task = type('Task', (), {'support_inputs': support, 'support_targets': labels})
    fast, effective = adapt.adapt_task({'params': params, 'gate_logits': None}, task, None, loss, settings,
                                       settings_lib.Execution(), 'off', None, fixed_masks=masks)
    expected = conv.conv4_apply(effective(fast), query, method='conv', reference=support)
  predicted = loaded.predict(support, labels, query)
  np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-4)
  # A query image's prediction ignores the other query images; the transductive export's does not.
  changed = query.at[0].set(1.0 - query[0])
  np.testing.assert_allclose(loaded.predict(support, labels, changed)[1:], predicted[1:], rtol=1e-6, atol=1e-6)
  transductive = model_lib.predict_fn({**spec, 'bn_mode': 'transductive'}, loaded.params, loaded.masks)
  assert not np.allclose(transductive(support, labels, changed)[1:], transductive(support, labels, query)[1:])


def test_a_bad_bn_mode_is_refused():
  with pytest.raises(ValueError, match='bn_mode'):
    model_lib.check_spec({'arch': 'conv4', 'image_size': 8, 'loss': 'cross_entropy', 'bn_mode': 'per_image'})
  with pytest.raises(ValueError, match='conv4'):
    model_lib.check_spec({**MLP_SPEC, 'bn_mode': 'inductive'})


def test_int8_export_is_smaller_and_close(tmp_path):
  _, params, masks = _mlp(2, density=0.5)
  float_doc = model_lib.export_compact(str(tmp_path / 'f32'), MLP_SPEC, params, masks)
  int8_doc = model_lib.export_compact(str(tmp_path / 'int8'), MLP_SPEC, params, masks, quantization='int8')
  assert int8_doc['quantization'] == 'int8'
  assert int8_doc['artifact_bytes'] < float_doc['artifact_bytes']
  kernel_values = lambda doc: sum(e['parts']['values']['nbytes'] for k, e in doc['arrays'].items()
                                  if k.endswith('kernel'))
  assert kernel_values(int8_doc) * 4 == kernel_values(float_doc)  # One byte per kept weight instead of four.
  f32, q8 = model_lib.load_compact(str(tmp_path / 'f32')), model_lib.load_compact(str(tmp_path / 'int8'))
  x = jnp.linspace(-5, 5, 50, dtype=jnp.float32)[:, None]
  scale = float(jnp.max(jnp.abs(f32.apply(f32.params, x))))
  assert float(jnp.max(jnp.abs(q8.apply(q8.params, x) - f32.apply(f32.params, x)))) < 0.05 * scale
  kernels = [k for k, v in int8_doc['arrays'].items() if k.endswith('kernel')]
  assert all(int8_doc['arrays'][k]['encoding'].startswith('int8') for k in kernels)


def test_loading_a_folder_that_is_not_an_export_names_it(tmp_path):
  with pytest.raises(ValueError, match='not an export folder'):
    model_lib.load_compact(str(tmp_path))
  (tmp_path / 'config.json').write_text('{}')
  with pytest.raises(ValueError, match='export it first'):
    model_lib.load_compact(str(tmp_path))


def test_a_damaged_export_is_refused(tmp_path):
  _, params, masks = _mlp()
  model_lib.export_compact(str(tmp_path), MLP_SPEC, params, masks)
  blob = (tmp_path / artifact.ARRAYS_FILE).read_bytes()
  (tmp_path / artifact.ARRAYS_FILE).write_bytes(blob[:-5])
  with pytest.raises(ValueError, match='damaged'):
    model_lib.load_compact(str(tmp_path))
  (tmp_path / artifact.METADATA_FILE).write_text('{"format": ')
  with pytest.raises(ValueError, match='not valid JSON'):
    model_lib.load_compact(str(tmp_path))


def test_unknown_quantization_is_refused_before_writing(tmp_path):
  _, params, masks = _mlp()
  with pytest.raises(ValueError, match='--quantize'):
    model_lib.export_compact(str(tmp_path / 'out'), MLP_SPEC, params, masks, quantization='int4')
  assert not (tmp_path / 'out').exists()


def test_export_json_records_shapes_before_and_after(tmp_path):
  _, params, masks = _mlp(3, density=0.05)
  model_lib.export_compact(str(tmp_path), MLP_SPEC, params, masks)
  document = json.loads((tmp_path / artifact.METADATA_FILE).read_text())
  before, after = document['layer_shapes']['before'], document['layer_shapes']['after']
  assert before['Dense_0/kernel'] == [1, 40] and after['Dense_0/kernel'][1] < 40
  assert document['nonzero_params'] <= document['compact_params'] < document['total_params']


@pytest.mark.parametrize('learner', ['maml', 'meta_sgd'])
def test_rnn_with_hidden_unit_gates_predicts_the_masked_adaptation(tmp_path, learner):
  from metaprune_jax.nets import rnn  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  params = jax.tree.map(np.asarray, rnn.init_lstm(jax.random.key(0), 2, 8, 3, unit_scale=True))
  masks = jax.tree.map(lambda _: None, params)
  masks['unit_scale'] = (rng.random(8) < 0.5).astype(np.float32)
  masks['input_kernel'] = (rng.random(params['input_kernel'].shape) < 0.7).astype(np.float32)
  spec = {'arch': 'lstm', 'last_only': True, 'expand_output': True, 'learner': learner, 'loss': 'mse',
          'inner_lr': 0.1, 'num_inner_steps': 2, 'adapt_keys': None}
  inner_lrs = jax.tree.map(lambda p: np.full(p.shape, 0.05, np.float32), params) if learner == 'meta_sgd' else None
  document = model_lib.export_compact(str(tmp_path), spec, params, masks, inner_lrs=inner_lrs)
  assert document['layer_shapes']['after']['recurrent_kernel'][0] == int(masks['unit_scale'].sum())
  loaded = model_lib.load_compact(str(tmp_path))
  apply = lambda p, x: rnn.rnn_apply(p, x, cell='lstm', last_only=True)[..., None]
  loss = lambda p, x, y: jnp.mean((apply(p, x) - y) ** 2)
  xs, ys = rng.normal(size=(4, 5, 2)).astype(np.float32), rng.normal(size=(4, 3, 1)).astype(np.float32)
  xq = rng.normal(size=(6, 5, 2)).astype(np.float32)
  meta_params = {'params': params, 'gate_logits': None, **({'inner_lrs': inner_lrs} if inner_lrs else {})}
  settings = settings_lib.InnerSettings(inner_lr=0.1, num_inner_steps=2)
  task = type('Task', (), {'support_inputs': xs, 'support_targets': ys})
  fast, effective = adapt.adapt_task(meta_params, task, None, loss, settings, settings_lib.Execution(), 'off', None,
                                     fixed_masks=masks)
  np.testing.assert_allclose(loaded.predict(xs, ys, xq), apply(effective(fast), xq), atol=1e-5)
