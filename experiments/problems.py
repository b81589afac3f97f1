"""Task registry: what each ``--task`` name builds (model, losses, task samplers)."""

from collections.abc import Callable

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import rnn_problems
from experiments.config_check import invalid
from experiments.problem import Problem
from metaprune_jax import flops
from metaprune_jax import losses
from metaprune_jax.data import omniglot as omniglot_data
from metaprune_jax.data import omniglot_files
from metaprune_jax.data import omniglot_splits
from metaprune_jax.data import omniglot_tfds
from metaprune_jax.data import rotations as rotations_lib
from metaprune_jax.nets import conv
from metaprune_jax.nets import mlp
from metaprune_jax.tasks import augment
from metaprune_jax.tasks import omniglot as omniglot_tasks
from metaprune_jax.tasks import sinusoid


def sinusoid_problem(config: ml_collections.ConfigDict) -> Problem:
  task = config.task
  model = mlp.make_mlp(config.model.hidden_sizes, 1, config.model.activation, config.model.kernel_init_std)
  ranges = sinusoid.SinusoidRanges(tuple(task.amplitude_range), tuple(task.phase_range),
                                   tuple(task.input_range))

  def init_params(key):
    return model.init(key, jnp.zeros((1, 1), jnp.float32))['params']

  def train_sampler(key, num_tasks):
    return sinusoid.sample_sinusoid_tasks(key, num_tasks=num_tasks, num_support=task.num_shots,
                                          num_query=task.num_query, ranges=ranges)

  def eval_sampler(key, num_tasks, shots):
    return jax.jit(sinusoid.sample_sinusoid_tasks, static_argnames=(
        'num_tasks', 'num_support', 'num_query', 'ranges'))(
            key, num_tasks=num_tasks, num_support=shots, num_query=config.eval.num_query, ranges=ranges)

  head = (f'Dense_{len(tuple(config.model.hidden_sizes))}',)
  return Problem(init_params, losses.mse_loss(model.apply), train_sampler, eval_sampler, 'mse', head_keys=head,
                 apply_fn=lambda params, inputs, reference=None: model.apply({'params': params}, inputs))


def load_omniglot_splits(config: ml_collections.ConfigDict) -> omniglot_splits.OmniglotSplits:
  """Reads (or restores from cache) Omniglot and splits it as ``config.task`` says; uint8 images."""
  task = config.task
  if task.split_by not in ('character', 'alphabet'):
    raise invalid('task.split_by', task.split_by, "use 'character' or 'alphabet'")
  rotations = rotations_lib.check_rotations(task.rotations, name='--config.task.rotations')
  if task.data_source == 'files':
    if not os.path.isdir(task.data_dir):
      raise FileNotFoundError(
          f'--config.task.data_dir={task.data_dir!r} is not a folder. {omniglot_data.DATA_DIR_HELP}'
          " (then pass --config.task.data_source=tfds [--config.task.tfds_data_dir=DIR]).")
    dataset = omniglot_files.load_omniglot(
        task.data_dir, image_size=int(task.image_size), cache_dir=task.cache_dir or None, dtype='uint8',
        max_characters_per_alphabet=int(task.max_characters_per_alphabet) or None)
  elif task.data_source == 'tfds':
    dataset = omniglot_tfds.load_from_tfds(('small1', 'small2'), task.tfds_data_dir or None,
                                           int(task.image_size), dtype='uint8')
  else:
    raise invalid('task.data_source', task.data_source, "use 'files' or 'tfds'")
  try:
    return omniglot_splits.split_omniglot(dataset, sizes=tuple(task.split_sizes), by=task.split_by,
                                          seed=int(task.split_seed), rotations=rotations)
  except ValueError as e:
    raise invalid('task.split_sizes', tuple(task.split_sizes), str(e).rstrip('.')) from e


# How evaluation episodes pick their N classes (eval.protocol): 'mixed' from the whole held-out pool,
# 'within_alphabet' all from one held-out alphabet (Omniglot only; Lake et al. 2015).
EVAL_PROTOCOLS = ('mixed', 'within_alphabet')


def _largest_alphabet(dataset: omniglot_data.OmniglotDataset) -> tuple[str, int]:
  """The alphabet of ``dataset`` with the most classes (rotated copies included) and that class count."""
  names, counts = np.unique(dataset.alphabets, return_counts=True)
  return str(names[np.argmax(counts)]), int(counts.max())


def _check_episodes(images, ways, shots, queries, ways_field, shots_field, queries_field, split):
  num_classes, num_drawers = images.shape[:2]
  if ways > num_classes:
    raise invalid(ways_field, ways, f'the {split} split has only {num_classes} classes (characters x '
                   'rotations); lower it, or change split_sizes / rotations')
  if shots + queries > num_drawers:
    raise invalid(shots_field, shots, f'{shots_field} + {queries_field} = {shots} + {queries} exceeds the '
                   f'{num_drawers} drawers per character (support and query images are distinct)')


def conv_method(config: ml_collections.ConfigDict) -> str:
  """The Conv-4 formulation the launcher uses: ``config.execution.conv_method`` with ``'auto'`` resolved.

  ``'auto'`` picks ``'conv'`` (the native convolution) when every task of a
  vmapped call computes with the same weights, and ``'patches'`` when they
  differ per task (adapted MAML copies, per-task gate samples or per-task
  meta-pruner masks), where ``vmap`` would turn ``'conv'`` into a grouped
  convolution. The choice does not depend on the backend. Weights are shared across tasks for
  prototypical networks that are dense, draw one gate sample per meta-step
  (``execution.gate_sample_scope='batch'``), or run one task per meta-step; evaluation
  then uses the deterministic gates, shared too.
  """
  method = conv.resolve_method(config.execution.conv_method)
  if config.execution.conv_method != 'auto':
    return method
  mask = config.gates.mask
  shared_weights = config.algorithm == 'protonet' and mask != 'meta_pruner' and (
      mask == 'none' or int(config.outer.meta_batch_size) == 1 or config.execution.gate_sample_scope == 'batch')
  return 'conv' if shared_weights else method


def omniglot_problem(config: ml_collections.ConfigDict) -> Problem:
  """N-way K-shot Omniglot with a gated Conv-4; every size is checked before anything compiles."""
  task, model, evals = config.task, config.model, config.eval
  for path, value in (('task.ways', task.ways), ('task.shots', task.shots), ('task.queries', task.queries),
                      ('task.image_size', task.image_size), ('model.conv_width', model.conv_width),
                      ('model.conv_depth', model.conv_depth), ('eval.chunk_size', evals.chunk_size)):
    if int(value) < 1:
      raise invalid(path, value, 'must be a positive integer')
  if evals.split not in ('test', 'validation'):
    raise invalid('eval.split', evals.split, "use 'test' or 'validation'")
  if evals.protocol not in EVAL_PROTOCOLS:
    raise invalid('eval.protocol', evals.protocol, f'use one of {EVAL_PROTOCOLS}')
  train_shift = task.train_shift
  if isinstance(train_shift, bool) or not isinstance(train_shift, int) or not 0 <= 2 * train_shift < task.image_size:
    raise invalid('task.train_shift', train_shift,
                   f'use an integer number of pixels in [0, {(int(task.image_size) - 1) // 2}] (0: no shifts)')
  conv.resolve_method(config.execution.conv_method)
  if conv.feature_size(int(task.image_size), int(model.conv_depth)) < 1:
    raise invalid('model.conv_depth', model.conv_depth, f'{model.conv_depth} max-pools halve task.image_size='
                   f'{task.image_size} to nothing')
  splits = load_omniglot_splits(config)
  eval_dataset = getattr(splits, evals.split)
  train_images, eval_images = splits.train.images, eval_dataset.images
  ways, shots, queries = int(task.ways), int(task.shots), int(task.queries)
  _check_episodes(train_images, ways, shots, queries, 'task.ways', 'task.shots', 'task.queries', 'meta-train')
  if len(eval_images) == 0:
    raise invalid('task.split_sizes', tuple(task.split_sizes), f'the {evals.split} split is empty')
  for eval_ways in evals.ways:
    _check_episodes(eval_images, int(eval_ways), max(evals.shots), int(evals.num_query),
                    'eval.ways', 'eval.shots', 'eval.num_query', evals.split)
    if config.algorithm != 'protonet' and int(eval_ways) != ways:
      raise invalid('eval.ways', tuple(evals.ways), f'{config.algorithm} has a {ways}-way head; only '
                     f'protonet evaluates at other ways than --config.task.ways={ways}')
  if evals.protocol == 'within_alphabet':
    alphabet, alphabet_classes = _largest_alphabet(eval_dataset)
    if max(int(w) for w in tuple(evals.ways) or (ways,)) > alphabet_classes:
      raise invalid('eval.ways', tuple(evals.ways), f'within-alphabet episodes draw every class from one '
                     f'{evals.split} alphabet and the largest, {alphabet}, has {alphabet_classes} classes (characters '
                     'x rotations); lower it, or use --config.eval.protocol=mixed')
  eval_groups = omniglot_tasks.group_ids(eval_dataset.alphabets)  # Alphabet ids; rotated copies keep theirs.
  method = conv_method(config)
  train_images, eval_images = jax.device_put(train_images), jax.device_put(eval_images)

  def as_float(tasks):
    scale = lambda x: x.astype(jnp.float32) / 255.0  # pylint: disable=unnecessary-lambda-assignment
    return tasks._replace(support_inputs=scale(tasks.support_inputs), query_inputs=scale(tasks.query_inputs))

  def init_params(key):
    return conv.init_conv4(key, image_size=int(task.image_size), width=int(model.conv_width),
                           depth=int(model.conv_depth), num_classes=ways)

  # reference: None (batch norm over `images`), or the support images whose statistics normalise `images`.
  def loss_fn(params, images, labels, reference=None):
    return losses.softmax_cross_entropy(conv.conv4_apply(params, images, method=method, reference=reference), labels)

  def accuracy_fn(params, images, labels, reference=None):
    logits = conv.conv4_apply(params, images, method=method, reference=reference)
    return jnp.mean((jnp.argmax(logits, -1) == losses.labels_of(labels, logits.ndim)).astype(jnp.float32))

  def embed_fn(params, images, reference=None):
    return conv.conv4_features(params, images, method=method, reference=reference)

  def sample_train(key, num_tasks):
    return omniglot_tasks.sample_episodes(key, train_images, num_tasks=num_tasks, ways=ways, shots=shots,
                                          queries=queries)

  def train_sampler(key, num_tasks):
    if not train_shift:  # The key is split only when shifting, so train_shift=0 keeps every seed's episodes.
      return as_float(sample_train(key, num_tasks))
    key, shift_key = jax.random.split(key)
    return as_float(augment.shift_episodes(shift_key, sample_train(key, num_tasks), train_shift))

  def sample_held_out(key, num_tasks, shots, ways):
    sizes = dict(num_tasks=num_tasks, ways=ways, shots=shots, queries=int(evals.num_query))
    if evals.protocol == 'within_alphabet':  # An alphabet uniformly among those with >= ways classes.
      return omniglot_tasks.sample_within_group_episodes(key, eval_images, eval_groups, **sizes)
    return omniglot_tasks.sample_episodes(key, eval_images, **sizes)

  sample_eval = jax.jit(lambda key, num_tasks, shots, ways: as_float(sample_held_out(key, num_tasks, shots, ways)),
                        static_argnums=(1, 2, 3))

  def eval_sampler(key, num_tasks, shots, ways=ways):
    return sample_eval(key, int(num_tasks), int(shots), int(ways))

  def flops_fn(params, masks):
    return flops.conv4_flops(params, masks, image_size=int(task.image_size))

  return Problem(init_params, loss_fn, train_sampler, eval_sampler, 'accuracy', accuracy_fn=accuracy_fn,
                 embed_fn=embed_fn, head_keys=('head',), flops_fn=flops_fn,
                 apply_fn=lambda params, images, reference=None: conv.conv4_apply(params, images, method=method,
                                                                                  reference=reference))


PROBLEMS: dict[str, Callable[[ml_collections.ConfigDict], Problem]] = {
    'sinusoid': sinusoid_problem,
    'omniglot': omniglot_problem,
    'sequence': rnn_problems.sequence_problem,
    'strokes': rnn_problems.strokes_problem,
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


def episode_fields(config: ml_collections.ConfigDict) -> tuple[str, str]:
  """The names of the meta-training shots and queries fields in ``config.task`` (Omniglot: shots, queries)."""
  if 'shots' in config.task:
    return 'shots', 'queries'
  return 'num_shots', 'num_query'


def get_problem(config: ml_collections.ConfigDict) -> Problem:
  """Builds the problem named by ``config.task.name``; unknown names list the valid ones."""
  if config.task.name not in PROBLEMS:
    raise ValueError(f'--task={config.task.name!r} is unknown; valid tasks: {", ".join(sorted(PROBLEMS))}.')
  return PROBLEMS[config.task.name](config)
