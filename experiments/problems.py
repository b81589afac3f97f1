"""Task registry: what each ``--task`` name builds (model, losses, task samplers)."""

from collections.abc import Callable
from typing import NamedTuple

import os

import jax
import jax.numpy as jnp
import ml_collections
import optax

from metaprune_jax import flops
from metaprune_jax import losses
from metaprune_jax import types
from metaprune_jax.data import omniglot as omniglot_data
from metaprune_jax.data import rotations as rotations_lib
from metaprune_jax.nets import conv
from metaprune_jax.nets import mlp
from metaprune_jax.tasks import augment
from metaprune_jax.tasks import omniglot as omniglot_tasks
from metaprune_jax.tasks import sinusoid


class Problem(NamedTuple):
  """Everything the training loop needs to know about a task family.

  Attributes:
    init_params: ``key -> params``.
    loss_fn: ``(params, inputs, targets) -> scalar``.
    train_sampler: ``(key, num_tasks) -> TaskBatch`` for meta-training.
    eval_sampler: ``(key, num_tasks, shots) -> TaskBatch`` for evaluation.
    metric: name of the reported metric (``'mse'`` or ``'accuracy'``).
    accuracy_fn: classification only: ``(params, inputs, labels) -> scalar``
      accuracy in [0, 1]; None for regression.
    embed_fn: ``(params, inputs) -> [n, features]`` penultimate features (for
      prototypical networks); None when the model has no embedding.
    head_keys: top-level parameter names of the output head (what ANIL adapts).
    flops_fn: ``(params, masks) -> dict`` FLOPs and structure report of the
      (masked) network, or None.
  """
  init_params: Callable[[types.PRNGKey], types.Params]
  loss_fn: Callable
  train_sampler: Callable[[types.PRNGKey, int], types.TaskBatch]
  eval_sampler: Callable[[types.PRNGKey, int, int], types.TaskBatch]
  metric: str
  accuracy_fn: Callable | None = None
  embed_fn: Callable | None = None
  head_keys: tuple[str, ...] = ()
  flops_fn: Callable | None = None


def sinusoid_problem(config: ml_collections.ConfigDict) -> Problem:
  model = mlp.make_mlp(config.hidden_sizes, 1, config.activation, config.kernel_init_std)
  ranges = sinusoid.SinusoidRanges(tuple(config.amplitude_range), tuple(config.phase_range),
                                   tuple(config.input_range))

  def init_params(key):
    return model.init(key, jnp.zeros((1, 1), jnp.float32))['params']

  def train_sampler(key, num_tasks):
    return sinusoid.sample_sinusoid_tasks(key, num_tasks=num_tasks, num_support=config.num_shots,
                                          num_query=config.num_query, ranges=ranges)

  def eval_sampler(key, num_tasks, shots):
    return jax.jit(sinusoid.sample_sinusoid_tasks, static_argnames=(
        'num_tasks', 'num_support', 'num_query', 'ranges'))(
            key, num_tasks=num_tasks, num_support=shots, num_query=config.eval_num_query, ranges=ranges)

  head = (f'Dense_{len(tuple(config.hidden_sizes))}',)
  return Problem(init_params, losses.mse_loss(model.apply), train_sampler, eval_sampler, 'mse', head_keys=head)


def _invalid(field: str, value, rule: str) -> ValueError:
  return ValueError(f'--config.{field}={value!r} is invalid: {rule}.')


def load_omniglot_splits(config: ml_collections.ConfigDict) -> omniglot_data.OmniglotSplits:
  """Reads (or restores from cache) Omniglot and splits it as ``config`` says; uint8 images."""
  if config.split_by not in ('character', 'alphabet'):
    raise _invalid('split_by', config.split_by, "use 'character' or 'alphabet'")
  rotations = rotations_lib.check_rotations(config.rotations, name='--config.rotations')
  if config.data_source == 'files':
    if not os.path.isdir(config.data_dir):
      raise FileNotFoundError(
          f'--config.data_dir={config.data_dir!r} is not a folder. {omniglot_data._DATA_DIR_HELP}'  # pylint: disable=protected-access
          " (then pass --config.data_source=tfds [--config.tfds_data_dir=DIR]).")
    dataset = omniglot_data.load_omniglot(
        config.data_dir, image_size=int(config.image_size), cache_dir=config.cache_dir or None, dtype='uint8',
        max_characters_per_alphabet=int(config.max_characters_per_alphabet) or None)
  elif config.data_source == 'tfds':
    dataset = omniglot_data.load_from_tfds(('small1', 'small2'), config.tfds_data_dir or None,
                                           int(config.image_size), dtype='uint8')
  else:
    raise _invalid('data_source', config.data_source, "use 'files' or 'tfds'")
  try:
    return omniglot_data.split_omniglot(dataset, sizes=tuple(config.split_sizes), by=config.split_by,
                                        seed=int(config.split_seed), rotations=rotations)
  except ValueError as e:
    raise _invalid('split_sizes', tuple(config.split_sizes), str(e).rstrip('.')) from e


def _check_episodes(images, ways, shots, queries, ways_field, shots_field, queries_field, split):
  num_classes, num_drawers = images.shape[:2]
  if ways > num_classes:
    raise _invalid(ways_field, ways, f'the {split} split has only {num_classes} classes (characters x '
                   'rotations); lower it, or change split_sizes / rotations')
  if shots + queries > num_drawers:
    raise _invalid(shots_field, shots, f'{shots_field} + {queries_field} = {shots} + {queries} exceeds the '
                   f'{num_drawers} drawers per character (support and query images are distinct)')


def conv_method(config: ml_collections.ConfigDict) -> str:
  """The Conv-4 formulation the launcher uses: ``config.conv_method`` with ``'auto'`` resolved.

  ``'auto'`` picks ``'conv'`` (the native convolution: ~1.6x faster than
  ``'patches'`` for a 20-way ProtoNet step on the 2-core CPU, level on an H200)
  when every task of a vmapped call computes with the same weights, and
  ``'patches'`` when they differ per task (adapted MAML copies, per-task gate
  samples or per-task meta-pruner masks), where ``vmap`` would turn ``'conv'``
  into a grouped convolution (18-37x slower on the CPU, 2.3x on the H200). The
  choice does not depend on the backend. Weights are shared across tasks for
  prototypical networks that are dense, draw one gate sample per meta-step
  (``gate_sample_scope='batch'``), or run one task per meta-step; evaluation
  then uses the deterministic gates, shared too.
  """
  method = conv.resolve_method(config.conv_method)
  if config.conv_method != 'auto':
    return method
  shared_weights = config.algorithm == 'protonet' and config.mask != 'meta_pruner' and (
      config.mask == 'none' or int(config.meta_batch_size) == 1 or config.gate_sample_scope == 'batch')
  return 'conv' if shared_weights else method


def omniglot_problem(config: ml_collections.ConfigDict) -> Problem:
  """N-way K-shot Omniglot with a gated Conv-4; every size is checked before anything compiles."""
  for field in ('ways', 'shots', 'queries', 'image_size', 'conv_width', 'conv_depth', 'eval_chunk_size'):
    if int(config[field]) < 1:
      raise _invalid(field, config[field], 'must be a positive integer')
  if config.eval_split not in ('test', 'validation'):
    raise _invalid('eval_split', config.eval_split, "use 'test' or 'validation'")
  train_shift = config.get('train_shift', 0)
  if isinstance(train_shift, bool) or not isinstance(train_shift, int) or not 0 <= 2 * train_shift < config.image_size:
    raise _invalid('train_shift', train_shift,
                   f'use an integer number of pixels in [0, {(int(config.image_size) - 1) // 2}] (0: no shifts)')
  conv.resolve_method(config.conv_method)
  if conv.feature_size(int(config.image_size), int(config.conv_depth)) < 1:
    raise _invalid('conv_depth', config.conv_depth, f'{config.conv_depth} max-pools halve image_size='
                   f'{config.image_size} to nothing')
  splits = load_omniglot_splits(config)
  train_images, eval_images = splits.train.images, getattr(splits, config.eval_split).images
  ways, shots, queries = int(config.ways), int(config.shots), int(config.queries)
  _check_episodes(train_images, ways, shots, queries, 'ways', 'shots', 'queries', 'meta-train')
  if len(eval_images) == 0:
    raise _invalid('split_sizes', tuple(config.split_sizes), f'the {config.eval_split} split is empty')
  for eval_ways in config.eval_ways:
    _check_episodes(eval_images, int(eval_ways), max(config.eval_shots), int(config.eval_num_query),
                    'eval_ways', 'eval_shots', 'eval_num_query', config.eval_split)
    if config.algorithm != 'protonet' and int(eval_ways) != ways:
      raise _invalid('eval_ways', tuple(config.eval_ways), f'{config.algorithm} has a {ways}-way head; only '
                     f'protonet evaluates at other ways than --config.ways={ways}')
  method = conv_method(config)
  train_images, eval_images = jax.device_put(train_images), jax.device_put(eval_images)

  def as_float(tasks):
    scale = lambda x: x.astype(jnp.float32) / 255.0  # pylint: disable=unnecessary-lambda-assignment
    return tasks._replace(support_inputs=scale(tasks.support_inputs), query_inputs=scale(tasks.query_inputs))

  def init_params(key):
    return conv.init_conv4(key, image_size=int(config.image_size), width=int(config.conv_width),
                           depth=int(config.conv_depth), num_classes=ways)

  def loss_fn(params, images, labels):
    logits = conv.conv4_apply(params, images, method=method)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

  def accuracy_fn(params, images, labels):
    return jnp.mean((jnp.argmax(conv.conv4_apply(params, images, method=method), -1) == labels).astype(jnp.float32))

  def embed_fn(params, images):
    return conv.conv4_features(params, images, method=method)

  def sample_train(key, num_tasks):
    return omniglot_tasks.sample_episodes(key, train_images, num_tasks=num_tasks, ways=ways, shots=shots,
                                          queries=queries)

  def train_sampler(key, num_tasks):
    if not train_shift:  # The key is split only when shifting, so train_shift=0 keeps every seed's episodes.
      return as_float(sample_train(key, num_tasks))
    key, shift_key = jax.random.split(key)
    return as_float(augment.shift_episodes(shift_key, sample_train(key, num_tasks), train_shift))

  sample_eval = jax.jit(lambda key, num_tasks, shots, ways: as_float(omniglot_tasks.sample_episodes(
      key, eval_images, num_tasks=num_tasks, ways=ways, shots=shots, queries=int(config.eval_num_query))),
                        static_argnums=(1, 2, 3))

  def eval_sampler(key, num_tasks, shots, ways=ways):
    return sample_eval(key, int(num_tasks), int(shots), int(ways))

  def flops_fn(params, masks):
    return flops.conv4_flops(params, masks, image_size=int(config.image_size))

  return Problem(init_params, loss_fn, train_sampler, eval_sampler, 'accuracy', accuracy_fn=accuracy_fn,
                 embed_fn=embed_fn, head_keys=('head',), flops_fn=flops_fn)


def _rnn_problem(name: str) -> Callable[[ml_collections.ConfigDict], Problem]:
  """``experiments.rnn_problems.<name>``, imported on first use (it imports this module for ``Problem``)."""
  def build(config):
    from experiments import rnn_problems  # pylint: disable=import-outside-toplevel
    return getattr(rnn_problems, name)(config)
  return build


PROBLEMS: dict[str, Callable[[ml_collections.ConfigDict], Problem]] = {
    'sinusoid': sinusoid_problem,
    'omniglot': omniglot_problem,
    'sequence': _rnn_problem('sequence_problem'),
    'strokes': _rnn_problem('strokes_problem'),
}


def task_from_argv(argv: list[str], default: str = 'sinusoid') -> str:
  """The ``--task`` value in a raw argv (launchers need it before flags are parsed: it picks the config file)."""
  task = default
  for i, arg in enumerate(argv):
    if arg.startswith('--task='):
      task = arg.split('=', 1)[1]
    elif arg == '--task' and i + 1 < len(argv):
      task = argv[i + 1]
  return task


def get_problem(config: ml_collections.ConfigDict) -> Problem:
  """Builds the problem named by ``config.task``; unknown names list the valid ones."""
  if config.task not in PROBLEMS:
    raise ValueError(f'--task={config.task!r} is unknown; valid tasks: {", ".join(sorted(PROBLEMS))}.')
  return PROBLEMS[config.task](config)
