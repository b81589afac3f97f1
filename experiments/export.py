"""Export a pruned run as a physically smaller model.

``python -m experiments.export --workdir=RUN --out=DIR [--quantize=none|int8]``
restores the newest checkpoint of ``RUN``, hardens its gates (the deterministic
0/1 gates the run's ``sparse`` results use), removes closed units
(``metaprune_jax.export``: neurons, conv channels, RNN hidden units, and the
matching inputs of the next layer), stores what is left (pruned weights inside
kept units packed, int8 kernels with ``--quantize=int8``) and checks the export
against the masked model:

* ``max_abs_output_diff``: the largest output difference on held-out tasks,
  before adaptation (the query images of ``--num_check_tasks`` tasks) and after
  it (the learner's few-shot prediction: adapted MAML weights, or prototypes);
* ``held_out``: the exported model's metric (accuracy or MSE) on
  ``eval.num_tasks`` held-out tasks of the run's ``eval.split``, the first of
  its ``eval.ways`` / ``eval.shots``, mean +- 95% CI, and the masked model's on
  the same tasks.

Everything goes to ``DIR`` (``arrays.bin`` + ``export.json``); the run folder is
only read. Errors are one ``error:`` line (exit 2).
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from etils import epath

from experiments import build
from experiments import evaluation
from experiments import export_spec
from experiments import provenance
from experiments import workdir as workdir_lib
from metaprune_jax import checkpoint
from metaprune_jax.export import artifact
from metaprune_jax.export import model as model_lib
from metaprune_jax.masks import hard_concrete
from metaprune_jax.meta import adapt
from metaprune_jax.meta import protonet
from metaprune_jax.meta import evaluate as evaluate_lib

def check_exportable(config, meta_params, workdir: str) -> None:
  """Raises ``ValueError`` naming the run when it cannot be exported as one compact model."""
  if meta_params.get('gate_logits') is None:
    raise ValueError(f'{workdir} is a dense run (gates.mask={config.gates.mask!r}): it has no gates, so nothing '
                     'is pruned to remove. Export a run trained with --config.gates.mask=hard_concrete.')
  if config.gates.mask == 'meta_pruner':
    raise ValueError(f"{workdir} is a meta_pruner run: its masks depend on each task, so there is no one compact "
                     'model to export. Export a run with --config.gates.mask=hard_concrete.')
  if bool(config.inner.adapt_gates):
    raise ValueError(f'{workdir} adapts its gates per task (inner.adapt_gates=True): the pruned structure '
                     'changes per task, so there is no one compact model to export.')


def _training_provenance(workdir: str) -> dict | None:
  """The commit and JAX build that trained the run (its ``summary.json``), or None (unfinished or older run)."""
  try:
    return json.loads((epath.Path(workdir) / 'summary.json').read_text()).get('provenance')
  except (OSError, ValueError):
    return None


def _check_out(workdir: str, out: str) -> None:
  run, dest = os.path.realpath(workdir), os.path.realpath(out)
  if dest == run or dest.startswith(run + os.sep):
    raise ValueError(f'--out={out} is inside the run folder {workdir}; the export never writes into a run. '
                     'Pass another folder.')
  if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, artifact.METADATA_FILE)):
    raise ValueError(f'--out={out} exists and is not an export folder; pass an empty or new folder.')


def _query_reference(spec, task) -> dict:
  """``{'reference': support}`` for an inductive spec (batch norm over the query with the support's statistics)."""
  return {'reference': task.support_inputs} if model_lib.bn_mode(spec) == 'inductive' else {}


def masked_predictor(exp, meta_params, spec):
  """A jitted ``tasks -> (before, after)``: the masked model's query outputs ``[tasks, query, ...]`` before and
  after the learner adapts (prototype logits, twice, for a prototypical network), in ``spec``'s bn mode."""
  problem, settings = exp.problem, exp.eval_settings._replace(num_inner_steps=int(spec['num_inner_steps']))
  masked = adapt.masked_params(meta_params, None, 'deterministic', exp.settings.hc)
  if not model_lib.adapts(spec):
    def logits(task):
      out = protonet.prototype_logits(problem.embed_fn(masked, task.support_inputs), task.support_targets,
                                      problem.embed_fn(masked, task.query_inputs, **_query_reference(spec, task)))
      return out, out
    return jax.jit(jax.vmap(logits))
  keys = tuple(spec['adapt_keys']) if spec['adapt_keys'] else None

  def both(task):
    fast, effective = adapt.adapt_task(meta_params, task, None, problem.loss_fn, settings, exp.execution._replace(
        python_loop=False), 'deterministic', None, adapt_keys=keys)
    reference = _query_reference(spec, task)
    return (problem.apply_fn(masked, task.query_inputs, **reference),
            problem.apply_fn(effective(fast), task.query_inputs, **reference))
  return jax.jit(jax.vmap(both))


def exported_predictor(model):
  """The same for an ``ExportedModel``: a jitted ``tasks -> (before, after)``."""
  def both(task):
    after = model.predict(task.support_inputs, task.support_targets, task.query_inputs)
    if not model_lib.adapts(model.spec):
      return after, after
    return model.apply(model.params, task.query_inputs, **_query_reference(model.spec, task)), after
  return jax.jit(jax.vmap(both))


def _metric(spec, outputs, targets) -> np.ndarray:
  """Per-task accuracy (classification) or MSE (regression) of query outputs ``[tasks, query, ...]``."""
  if spec['loss'] == 'mse':
    return np.asarray(jnp.mean((outputs - targets) ** 2, axis=tuple(range(1, outputs.ndim))), np.float64)
  return np.asarray(jnp.mean(jnp.argmax(outputs, -1) == targets, axis=-1), np.float64)


def _held_out(config, exp):
  ways = (tuple(config.eval.ways) or (None,))[0]
  shots = int(config.eval.shots[0])
  return evaluation.held_out_tasks(config, exp.problem, shots, ways), shots, ways


def _chunks(tasks, size: int):
  num = int(jax.tree.leaves(tasks)[0].shape[0])
  for start in range(0, num, size):
    yield jax.tree.map(lambda x, s=start: x[s:s + size], tasks)


def export_run(workdir: str, out: str, *, quantization: str = 'none', num_check_tasks: int = 20,
               data_dir: str | None = None) -> dict:
  """Exports the run in ``workdir`` to ``out`` and checks it (module docstring); returns ``export.json``."""
  if quantization not in artifact.QUANTIZATIONS:
    raise ValueError(f'--quantize={quantization!r} is unknown; use one of {artifact.QUANTIZATIONS}.')
  _check_out(workdir, out)
  exp, state = build.load(workdir, data_dir=data_dir)
  config, meta_params = exp.config, state.meta_params
  check_exportable(config, meta_params, workdir)
  spec = export_spec.model_spec(config)
  masks = hard_concrete.deterministic_gates(meta_params['gate_logits'], exp.settings.hc)
  gate_values = np.concatenate([np.ravel(np.asarray(g)) for g in jax.tree.leaves(masks)])
  report = {
      'source': {'workdir': workdir_lib.absolute(workdir), 'step': int(state.step), 'config': config.to_dict(),
                 'provenance': _training_provenance(workdir)},
      'provenance': provenance.provenance(),
      'fractional_gates': int(np.sum((gate_values > 0) & (gate_values < 1))),
  }
  model_lib.export_compact(out, spec, meta_params['params'], masks, quantization=quantization,
                           inner_lrs=meta_params.get('inner_lrs'), report=report)
  model = model_lib.load_compact(out)
  masked_fn, exported_fn = masked_predictor(exp, meta_params, spec), exported_predictor(model)
  tasks, shots, ways = _held_out(config, exp)
  check = jax.tree.map(lambda x: x[:num_check_tasks], tasks)
  (masked_before, masked_after), (export_before, export_after) = masked_fn(check), exported_fn(check)
  diffs = {'before_adaptation': float(jnp.max(jnp.abs(masked_before - export_before))),
           'after_adaptation': float(jnp.max(jnp.abs(masked_after - export_after))),
           'num_tasks': int(jax.tree.leaves(check)[0].shape[0])}
  exported, masked = [], []
  for chunk in _chunks(tasks, int(config.eval.chunk_size)):
    exported.append(_metric(spec, exported_fn(chunk)[1], chunk.query_targets))
    masked.append(_metric(spec, masked_fn(chunk)[1], chunk.query_targets))
  exported, masked = np.concatenate(exported), np.concatenate(masked)
  name = 'mse' if spec['loss'] == 'mse' else 'accuracy'
  held_out = {'metric': name, 'split': str(config.eval.get('split', 'sampled')), 'shots': shots, 'ways': ways,
              'num_tasks': len(exported), 'seed': int(config.seed),
              'inner_steps': int(spec['num_inner_steps']) if model_lib.adapts(spec) else 0,
              'exported': {'mean': float(exported.mean()), 'ci95': evaluate_lib.confidence_interval_95(exported)},
              'masked': {'mean': float(masked.mean()), 'ci95': evaluate_lib.confidence_interval_95(masked)}}
  return artifact.update_metadata(out, {'max_abs_output_diff': max(diffs['before_adaptation'],
                                                                   diffs['after_adaptation']),
                                        'output_diff': diffs, 'held_out': held_out})


def format_report(document: dict) -> str:
  held = document['held_out']
  size = (f"{document['spec']['arch']} ({document['spec']['learner']}), quantization {document['quantization']}: "
          f"{document['artifact_bytes']:,} bytes of arrays vs {document['dense_bytes']:,} dense float32 "
          f"({document['artifact_bytes'] / document['dense_bytes']:.3f}x); {document['nonzero_params']:,} nonzero "
          f"of {document['total_params']:,} params ({document['compact_params']:,} in the compact arrays)")
  diff = (f"max |exported - masked| output: {document['max_abs_output_diff']:.3g} "
          f"(before adaptation {document['output_diff']['before_adaptation']:.3g}, after "
          f"{document['output_diff']['after_adaptation']:.3g}; {document['output_diff']['num_tasks']} tasks)")
  episodes = f"{held['ways']}-way {held['shots']}-shot" if held['ways'] else f"{held['shots']}-shot"
  metric = (f"held-out {held['metric']} on {held['num_tasks']} {held['split']} tasks (seed {held['seed']}, "
            f"{episodes}): exported {held['exported']['mean']:.4f} +- {held['exported']['ci95']:.4f}, masked "
            f"{held['masked']['mean']:.4f} +- {held['masked']['ci95']:.4f} (95% CI)")
  lines = [size, diff, metric]
  return '\n'.join(lines)


def define_flags() -> None:
  """The launcher's flags (defined only when run as a script, so other launchers can import this module)."""
  flags.DEFINE_string('workdir', None, 'A run folder written by experiments.maml_prune.')
  flags.DEFINE_string('out', None, 'The export folder to write (not inside the run folder).')
  flags.DEFINE_string('quantize', 'none', "'none' (float32) or 'int8' (per-channel symmetric kernels).")
  flags.DEFINE_integer('num_check_tasks', 20, 'Held-out tasks for max_abs_output_diff.')
  flags.DEFINE_string('data_dir', None, "Overrides the run's config.task.data_dir.")


def main(argv):
  values = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  checkpoint.quiet_orbax_logs()
  if not values.workdir or not values.out:
    print('error: pass --workdir=RUN (a run folder) and --out=DIR (the export folder).', file=sys.stderr)
    sys.exit(2)
  try:
    document = export_run(values.workdir, values.out, quantization=values.quantize,
                          num_check_tasks=values.num_check_tasks, data_dir=values.data_dir)
  except (ValueError, OSError) as e:
    print(f'error: --workdir={values.workdir}: {e}', file=sys.stderr)
    sys.exit(2)
  print(format_report(document))
  print(f'wrote {values.out}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
