"""Recurrent task families for the registry in ``experiments.problems``: ``sequence`` and ``strokes``.

Both use the masked LSTM / GRU of ``metaprune_jax.nets.rnn`` (``config.model.cell``).
With ``config.gates.granularity`` ``'hidden_unit'`` or ``'weight+hidden_unit'`` the net
gets a ``unit_scale`` leaf, the hook through which one hard-concrete gate per
hidden unit removes the whole unit (counted by ``masks.sparsity`` given
``expand_units=rnn.unit_keep_factors``); the dense
reference of such a run has the same leaf, so both nets are the same.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.config_check import require
from experiments.problem import Problem
from metaprune_jax import losses
from metaprune_jax.data import rotations as rotations_lib
from metaprune_jax.data import strokes as strokes_data
from metaprune_jax.nets import rnn
from metaprune_jax.tasks import omniglot as episodes
from metaprune_jax.tasks import sequence

UNIT_GRANULARITIES = ('hidden_unit', 'weight+hidden_unit')
STROKE_FEATURES = 3  # (dx, dy, pen_up)


def _check_rnn_config(config: ml_collections.ConfigDict) -> None:
  model = config.model
  require(model.cell in rnn.NUM_GATES, 'model.cell', model.cell, f'use one of {sorted(rnn.NUM_GATES)}')
  require(int(model.hidden_size) > 0, 'model.hidden_size', model.hidden_size, 'must be a positive integer')


def _init_fn(config, input_size: int, output_size: int):
  init = rnn.INIT[config.model.cell]
  unit_scale = config.gates.granularity in UNIT_GRANULARITIES

  def init_params(key):
    return init(key, input_size, int(config.model.hidden_size), output_size, unit_scale=unit_scale)
  return init_params


def sequence_problem(config: ml_collections.ConfigDict) -> Problem:
  """Few-shot forecasting of a random dynamical system (``tasks/sequence.py``).

  The net reads ``context_length`` values and its readout of the final hidden
  state is the whole ``horizon``-step continuation; loss: MSE.
  """
  _check_rnn_config(config)
  task, cell = config.task, config.model.cell
  require(task.kind in sequence.KINDS, 'task.kind', task.kind, f'use one of {list(sequence.KINDS)}')
  for field in ('context_length', 'horizon', 'ar_order'):
    require(int(task[field]) > 0, f'task.{field}', task[field], 'must be a positive integer')
  horizon = int(task.horizon)
  sizes = dict(context_length=int(task.context_length), horizon=horizon, kind=task.kind,
               ar_order=int(task.ar_order))

  def apply(variables, inputs):
    return rnn.rnn_apply(variables['params'], inputs, cell=cell, last_only=True)[..., None]

  def train_sampler(key, num_tasks):
    return sequence.sample_sequence_tasks(key, num_tasks=num_tasks, num_support=int(task.num_shots),
                                          num_query=int(task.num_query), **sizes)

  def eval_sampler(key, num_tasks, shots):
    return sequence.sample_sequence_tasks(key, num_tasks=num_tasks, num_support=int(shots),
                                          num_query=int(config.eval.num_query), **sizes)

  return Problem(_init_fn(config, 1, horizon), losses.mse_loss(apply), train_sampler, eval_sampler,
                          'mse', head_keys=('readout',), expand_units=rnn.unit_keep_factors,
                          apply_fn=lambda params, inputs, reference=None: apply({'params': params}, inputs))


@functools.lru_cache(maxsize=4)
def _stroke_splits(data_dir: str, cache_dir: str, num_points: int, split_seed: int,
                   train_rotations: tuple[int, ...] = ()):
  """Decoded (cached on disk and in memory) character-disjoint splits, on device.

  ``train_rotations`` adds rotated copies of the meta-training characters as
  extra classes; evaluation splits stay unrotated.
  """
  data = strokes_data.load_strokes(data_dir, num_points=num_points, cache_dir=cache_dir or None)
  splits = strokes_data.split_characters(data, seed=split_seed)
  if train_rotations:
    splits['train'] = strokes_data.rotate_drawings(splits['train'], train_rotations)
  return {name: (jax.device_put(np.asarray(part.drawings, np.float32)), part.names)
          for name, part in splits.items()}


def strokes_problem(config: ml_collections.ConfigDict) -> Problem:
  """N-way K-shot character classification from pen trajectories (``data/strokes.py``).

  LSTM/GRU encoder over ``(dx, dy, pen_up)`` sequences; the readout of the final
  hidden state is the ``ways``-way linear classifier head (``head_keys``);
  ``embed_fn`` is the final hidden state. Meta-training episodes come from the
  ``'train'`` characters (plus their ``config.task.train_rotations`` copies as extra
  classes), evaluation episodes from the unrotated ``config.eval.split``
  (``'test'`` by default); the splits are disjoint by character.
  """
  _check_rnn_config(config)
  task, cell, eval_split = config.task, config.model.cell, config.eval.split
  require(int(task.ways) >= 2, 'task.ways', task.ways, 'needs at least 2 classes per episode')
  require(eval_split in ('validation', 'val', 'test'), 'eval.split', eval_split, "use 'validation' or 'test'")
  eval_split = 'val' if eval_split == 'validation' else eval_split  # 'val': the name runs before session 11 saved.
  rotations = rotations_lib.check_rotations(task.train_rotations, name='--config.task.train_rotations')
  splits = _stroke_splits(task.data_dir, task.cache_dir, int(task.num_points), int(task.split_seed),
                          rotations)
  train_drawings, eval_drawings = splits['train'][0], splits[eval_split][0]
  ways = int(task.ways)
  for split, drawings in (('train', train_drawings), (eval_split, eval_drawings)):
    require(ways <= drawings.shape[0], 'task.ways', ways,
             f'the {split} split has only {drawings.shape[0]} characters')
  drawers = int(train_drawings.shape[1])
  for field in ('num_shots', 'num_query'):
    require(int(task.num_shots) + int(task.num_query) <= drawers, f'task.{field}', task[field],
             f'num_shots + num_query must be <= {drawers} drawers per character')

  def logits(params, inputs, reference=None):
    del reference  # Each sequence is read on its own: nothing depends on the batch.
    return rnn.rnn_apply(params, inputs, cell=cell, last_only=True)

  def apply(variables, inputs):
    return logits(variables['params'], inputs)

  def accuracy_fn(params, inputs, labels, reference=None):
    out = logits(params, inputs, reference)
    return jnp.mean(jnp.argmax(out, axis=-1) == losses.labels_of(labels, out.ndim))

  def embed_fn(params, inputs, reference=None):
    del reference
    return rnn.final_hidden(params, inputs, cell=cell)

  def train_sampler(key, num_tasks):
    return episodes.sample_episodes(key, train_drawings, num_tasks=num_tasks, ways=ways,
                                    shots=int(task.num_shots), queries=int(task.num_query))

  sample = jax.jit(episodes.sample_episodes, static_argnames=('num_tasks', 'ways', 'shots', 'queries'))

  def eval_sampler(key, num_tasks, shots):
    return sample(key, eval_drawings, num_tasks=num_tasks, ways=ways, shots=int(shots),
                  queries=int(config.eval.num_query))

  return Problem(_init_fn(config, STROKE_FEATURES, ways), losses.cross_entropy_loss(apply),
                          train_sampler, eval_sampler, 'accuracy', accuracy_fn=accuracy_fn,
                          embed_fn=embed_fn, head_keys=('readout',), expand_units=rnn.unit_keep_factors,
                          apply_fn=logits)


