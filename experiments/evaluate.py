"""Evaluate a trained run on a held-out split or on user episode folders.

``python -m experiments.evaluate --workdir=RUN --split=test`` evaluates the run's
test split once its recipe is final (``--split=validation`` re-reads the
validation split), with the run's own evaluation settings or
``--override=eval.FIELD=VALUE`` (repeatable; also ``bn_mode``); it writes
``RUN/heldout/<split>[__overrides].json`` and records a test evaluation in
``RUN/test_evaluations.jsonl``; a second test evaluation with the same settings
is refused unless ``--again`` (``experiments/heldout.py``).

``python -m experiments.evaluate --workdir=RUN --episodes=DIR`` restores the
newest checkpoint of ``RUN`` (with its ``config.json``) and evaluates it on
``DIR/<episode>/support/<class>/*.png`` + ``DIR/<episode>/query/<class>/*.png``
(any number of classes, shots and queries, any image size: images are
preprocessed like the training data, at the run's ``image_size``). Prints the
accuracy of every episode and the mean +- 95% CI, and writes
``--output`` (default ``RUN/episodes_eval.json``, or ``./episodes_eval.json``
when ``RUN`` is not writable; decided before the work). Errors are one ``error:`` line.

``--workdir`` may also be an export folder (``python -m experiments.export``):
the exported model (``metaprune_jax.export.load_compact``) is evaluated with
its learner's ``predict``, without the training code or data.

With ``config.algorithm='protonet'`` any N works. The head-based learners
(MAML and friends) adapt their ``ways``-way head, so episodes must have at most
``ways`` classes (labels are the sorted class names).
"""

import ast
import json
import os
import sys

from absl import app
from absl import flags
import numpy as np
import optax
from etils import epath

from experiments import build
from experiments import heldout
from experiments import workdir as workdir_lib
from metaprune_jax.data import episode_folders
from metaprune_jax.export import artifact
from metaprune_jax.export import model as export_model
from metaprune_jax.meta import evaluate


def define_flags() -> None:
  """The launcher's flags (defined only when run as a script, so tests and other launchers can import this module)."""
  flags.DEFINE_string('workdir', None, 'A run folder written by experiments.maml_prune, or an export '
                      'folder written by experiments.export.', required=True)
  flags.DEFINE_string('episodes', None, 'Folder of episodes (see the module docstring).')
  flags.DEFINE_enum('split', None, list(heldout.SPLITS), "Evaluate the run's held-out split instead of --episodes.")
  flags.DEFINE_multi_string('override', [], '--split only: PATH=VALUE of an evaluation setting (eval.* or '
                            "bn_mode), e.g. --override=eval.num_tasks=1000; values are Python literals or strings.")
  flags.DEFINE_bool('again', False, '--split=test only: evaluate although the test ledger holds these settings.')
  flags.DEFINE_string('output', None, 'JSON output path (default: WORKDIR/episodes_eval.json, or '
                      './episodes_eval.json when WORKDIR is not writable).')
  flags.DEFINE_enum('gate_mode', 'deterministic', ['deterministic', 'off'],
                    "'deterministic': the pruned network; 'off': the same weights without gates.")
  flags.DEFINE_string('data_dir', None, "Overrides the run's config.task.data_dir (the training data is "
                      'read only to rebuild the model functions).')


def _summary(workdir: str, episodes_dir: str, per_episode: list[dict], **fields) -> dict:
  accuracies = np.array([e['accuracy'] for e in per_episode])
  return {'workdir': workdir, 'episodes_dir': episodes_dir, **fields, 'mean_accuracy': float(accuracies.mean()),
          'ci95': evaluate.confidence_interval_95(accuracies), 'num_episodes': len(per_episode),
          'episodes': per_episode}


def evaluate_export(export_dir: str, episodes_dir: str) -> dict:
  """Accuracy (and loss) of an exported model (``experiments.export``) on every episode in ``episodes_dir``."""
  model = export_model.load_compact(export_dir)
  spec = model.spec
  if spec['loss'] != 'cross_entropy' or 'image_size' not in spec:
    raise ValueError(f"{export_dir} holds a {spec['arch']} model for {spec['loss']}; episode folders are images "
                     'for classification (an exported Conv-4).')
  episodes = episode_folders.load_episode_folders(episodes_dir, image_size=int(spec['image_size']))
  classes = None if not export_model.adapts(spec) else int(model.params['head']['bias'].shape[0])
  per_episode = []
  for episode in episodes:
    ways = len(episode.class_names)
    if classes is not None and ways > classes:
      raise ValueError(f'episode {episode.name} has {ways} classes but the exported {spec["learner"]} model has a '
                       f'{classes}-way head; only protonet classifies any number of classes.')
    logits = model.predict(episode.support_inputs, episode.support_targets, episode.query_inputs)
    labels = episode.query_targets
    per_episode.append({'episode': episode.name, 'ways': ways, 'support': int(len(episode.support_targets)),
                        'query': int(len(labels)),
                        'accuracy': float(np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(labels))),
                        'loss': float(np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)))})
  return _summary(export_dir, episodes_dir, per_episode, algorithm=spec['learner'], gate_mode='exported',
                  num_inner_steps=int(spec['num_inner_steps']), image_size=int(spec['image_size']),
                  quantization=model.metadata['quantization'])


def evaluate_episodes(workdir: str, episodes_dir: str, *, gate_mode: str = 'deterministic',
                      data_dir: str | None = None) -> dict:
  """Accuracy (and loss) of the run (or export) in ``workdir`` on every episode in ``episodes_dir``."""
  if os.path.isfile(os.path.join(workdir, artifact.METADATA_FILE)):
    return evaluate_export(workdir, episodes_dir)
  exp, state = build.load(workdir, data_dir=data_dir)
  config, meta_params = exp.config, state.meta_params
  if meta_params.get('gate_logits') is None:
    gate_mode = 'off'
  episodes = episode_folders.load_episode_folders(episodes_dir, image_size=int(config.task.image_size))
  learner, settings = exp.eval_learner, exp.settings._replace(inner_lr=float(config.eval.inner_lr))
  per_episode = []
  for episode in episodes:
    ways = len(episode.class_names)
    if config.algorithm != 'protonet' and ways > int(config.task.ways):
      raise ValueError(f'episode {episode.name} has {ways} classes but the run was trained with '
                       f'--config.task.ways={config.task.ways} and --config.algorithm={config.algorithm}; '
                       'only protonet classifies any number of classes.')
    traces = evaluate.learner_traces(learner, meta_params, episode_folders.as_task_batch(episode),
                                     settings=settings, gate_mode=gate_mode)
    per_episode.append({'episode': episode.name, 'ways': ways, 'support': int(len(episode.support_targets)),
                        'query': int(len(episode.query_targets)),
                        'accuracy': float(traces['accuracy'][0, -1]), 'loss': float(traces['loss'][0, -1])})
  return _summary(workdir, episodes_dir, per_episode, algorithm=config.algorithm, gate_mode=gate_mode,
                  num_inner_steps=int(config.inner.num_inner_steps), image_size=int(config.task.image_size))


def parse_overrides(items: list[str]) -> dict:
  """``['eval.num_tasks=1000', 'bn_mode=inductive']`` -> ``{'eval.num_tasks': 1000, 'bn_mode': 'inductive'}``."""
  overrides = {}
  for item in items:
    path, sep, text = item.partition('=')
    if not sep or not path:
      raise ValueError(f'--override={item!r} is invalid: use PATH=VALUE, e.g. --override=eval.num_tasks=1000')
    try:
      overrides[path.strip()] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      overrides[path.strip()] = text
  return overrides


def _print_heldout(record: dict) -> None:
  for model, by_episode in record['eval'].items():
    if not model.endswith('/accuracy') and f'{model}/accuracy' in record['eval']:
      continue
    for name, by_step in by_episode.items():
      for step, stats in by_step.items():
        print(f"{record['split']} {model} {name} {step}: {stats['mean']:.4f} +- {stats['ci95']:.4f} (95% CI, "
              f"{stats.get('num_tasks', record['eval_num_tasks'])} tasks)")


def _main_heldout() -> None:
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  try:
    record = heldout.evaluate_run(FLAGS.workdir, split=FLAGS.split, overrides=parse_overrides(FLAGS.override),
                                  data_dir=FLAGS.data_dir, again=FLAGS.again)
  except (ValueError, OSError) as e:  # ConfigError and RepeatedTestError are ValueErrors.
    print(f'error: --workdir={FLAGS.workdir}: {e}', file=sys.stderr)
    sys.exit(2)
  _print_heldout(record)
  if record.get('test_evaluation', 1) > 1:
    print(f"this is test evaluation {record['test_evaluation']} with these settings (see "
          f'{heldout.LEDGER_FILE})')
  print(f"wrote {os.path.join(FLAGS.workdir, heldout.RESULTS_FOLDER)}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if (flags.FLAGS.split is None) == (flags.FLAGS.episodes is None):
    print('error: pass exactly one of --split=validation|test (the run\'s held-out split) and --episodes=DIR',
          file=sys.stderr)
    sys.exit(2)
  if flags.FLAGS.split is not None:
    _main_heldout()
    return
  if flags.FLAGS.override or flags.FLAGS.again:
    print('error: --override and --again apply to --split only', file=sys.stderr)
    sys.exit(2)
  try:
    output = workdir_lib.output_path(flags.FLAGS.workdir, flags.FLAGS.output, 'episodes_eval.json')
    if os.path.dirname(os.path.abspath(output)) != os.path.abspath(flags.FLAGS.workdir) and not flags.FLAGS.output:
      print(f'{flags.FLAGS.workdir} is not writable: the result goes to {output}', file=sys.stderr)
    result = evaluate_episodes(flags.FLAGS.workdir, flags.FLAGS.episodes, gate_mode=flags.FLAGS.gate_mode, data_dir=flags.FLAGS.data_dir)
  except (ValueError, OSError) as e:  # FileNotFoundError, PermissionError too: one line, no flags help.
    print(f'error: --workdir={flags.FLAGS.workdir}: {e}', file=sys.stderr)
    sys.exit(2)
  for e in result['episodes']:
    print(f"{e['episode']}: {e['ways']}-way, {e['support']} support / {e['query']} query images: "
          f"accuracy {e['accuracy']:.4f}")
  print(f"mean accuracy over {result['num_episodes']} episodes: {result['mean_accuracy']:.4f} "
        f"+- {result['ci95']:.4f} (95% CI)")
  epath.Path(output).write_text(json.dumps(result, indent=2))  # Local or gs://.
  print(f'wrote {output}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
