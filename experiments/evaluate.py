"""Evaluate a trained run on user episode folders.

``python -m experiments.evaluate --workdir=RUN --episodes=DIR`` restores the
newest checkpoint of ``RUN`` (with its ``config.json``) and evaluates it on
``DIR/<episode>/support/<class>/*.png`` + ``DIR/<episode>/query/<class>/*.png``
(any number of classes, shots and queries, any image size: images are
preprocessed like the training data, at the run's ``image_size``). Prints the
accuracy of every episode and the mean +- 95% CI, and writes
``--output`` (default ``RUN/episodes_eval.json``).

With ``config.algorithm='protonet'`` any N works. The head-based learners
(MAML and friends) adapt their ``ways``-way head, so episodes must have at most
``ways`` classes (labels are the sorted class names).
"""

import json
import os

from absl import app
from absl import flags
import ml_collections
import numpy as np

from experiments import checkpoint
from experiments import problems
from experiments import train
from metaprune_jax.data import episode_folders
from metaprune_jax.meta import evaluate

_WORKDIR = flags.DEFINE_string('workdir', None, 'A run folder written by experiments.maml_prune.', required=True)
_EPISODES = flags.DEFINE_string('episodes', None, 'Folder of episodes (see the module docstring).', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'JSON output path (default: WORKDIR/episodes_eval.json).')
_GATE_MODE = flags.DEFINE_enum('gate_mode', 'deterministic', ['deterministic', 'off'],
                               "'deterministic': the pruned network; 'off': the same weights without gates.")
_DATA_DIR = flags.DEFINE_string('data_dir', None, "Overrides the run's config.data_dir (the training data is "
                                'read only to rebuild the model functions).')


def load_run(workdir: str, data_dir: str | None = None):
  """``(config, problem, meta_params)`` of the newest checkpoint in ``workdir``."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'--workdir={workdir!r} has no config.json; pass a folder written by '
                            'python -m experiments.maml_prune.')
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if data_dir:
    config.data_dir = data_dir
  problem = problems.get_problem(config)
  template, _ = train.init_state(config, problem)
  state = checkpoint.restore_latest(template, workdir)
  if state is None:
    raise FileNotFoundError(f'--workdir={workdir!r} has no checkpoint under checkpoints/; train it first.')
  return config, problem, state.meta_params


def evaluate_episodes(workdir: str, episodes_dir: str, *, gate_mode: str = 'deterministic',
                      data_dir: str | None = None) -> dict:
  """Accuracy (and loss) of the run in ``workdir`` on every episode in ``episodes_dir``."""
  config, problem, meta_params = load_run(workdir, data_dir)
  if meta_params.get('gate_logits') is None:
    gate_mode = 'off'
  episodes = episode_folders.load_episode_folders(episodes_dir, image_size=int(config.image_size))
  learner = train.learner_for(config, problem)
  settings = train.inner_settings(config, inner_lr=float(config.eval_inner_lr))
  per_episode = []
  for episode in episodes:
    ways = len(episode.class_names)
    if config.algorithm != 'protonet' and ways > int(config.ways):
      raise ValueError(f'episode {episode.name} has {ways} classes but the run was trained with '
                       f'--config.ways={config.ways} and --config.algorithm={config.algorithm}; only protonet '
                       'classifies any number of classes.')
    traces = evaluate.learner_traces(learner, meta_params, episode_folders.as_task_batch(episode),
                                     settings=settings, gate_mode=gate_mode)
    per_episode.append({'episode': episode.name, 'ways': ways, 'support': int(len(episode.support_targets)),
                        'query': int(len(episode.query_targets)),
                        'accuracy': float(traces['accuracy'][0, -1]), 'loss': float(traces['loss'][0, -1])})
  accuracies = np.array([e['accuracy'] for e in per_episode])
  return {'workdir': workdir, 'episodes_dir': episodes_dir, 'algorithm': config.algorithm, 'gate_mode': gate_mode,
          'num_inner_steps': int(config.num_inner_steps), 'image_size': int(config.image_size),
          'mean_accuracy': float(accuracies.mean()), 'ci95': evaluate.confidence_interval_95(accuracies),
          'num_episodes': len(per_episode), 'episodes': per_episode}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    result = evaluate_episodes(_WORKDIR.value, _EPISODES.value, gate_mode=_GATE_MODE.value, data_dir=_DATA_DIR.value)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from e
  for e in result['episodes']:
    print(f"{e['episode']}: {e['ways']}-way, {e['support']} support / {e['query']} query images: "
          f"accuracy {e['accuracy']:.4f}")
  print(f"mean accuracy over {result['num_episodes']} episodes: {result['mean_accuracy']:.4f} "
        f"+- {result['ci95']:.4f} (95% CI)")
  output = _OUTPUT.value or os.path.join(_WORKDIR.value, 'episodes_eval.json')
  with open(output, 'w') as f:
    json.dump(result, f, indent=2)
  print(f'wrote {output}')


if __name__ == '__main__':
  app.run(main)
