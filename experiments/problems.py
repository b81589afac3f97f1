"""Task registry: what each ``--task`` name builds (model, losses, task samplers)."""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from metaprune_jax import losses
from metaprune_jax import types
from metaprune_jax.nets import mlp
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
  """
  init_params: Callable[[types.PRNGKey], types.Params]
  loss_fn: Callable
  train_sampler: Callable[[types.PRNGKey, int], types.TaskBatch]
  eval_sampler: Callable[[types.PRNGKey, int, int], types.TaskBatch]
  metric: str
  accuracy_fn: Callable | None = None
  embed_fn: Callable | None = None
  head_keys: tuple[str, ...] = ()


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


def _rnn_problem(name: str) -> Callable[[ml_collections.ConfigDict], Problem]:
  """``experiments.rnn_problems.<name>``, imported on first use (it imports this module for ``Problem``)."""
  def build(config):
    from experiments import rnn_problems  # pylint: disable=import-outside-toplevel
    return getattr(rnn_problems, name)(config)
  return build


PROBLEMS: dict[str, Callable[[ml_collections.ConfigDict], Problem]] = {
    'sinusoid': sinusoid_problem,
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
