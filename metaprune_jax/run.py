"""``load_run(workdir)``: a trained run in a notebook, with a few-shot predictor for new tasks.

The library reads a run folder as it reads an export folder (``export.model.load_compact``): from files alone,
without importing ``experiments`` (the floor above, which writes the folder). It reads ``config.json`` and the
newest checkpoint (``checkpoint.load_run``) and ``model_spec.json``, the run's model spec in the format an
export stores (``export.model``'s module docstring), written by ``experiments.train`` beside the config.

``predict`` runs the run's masked model as its evaluation does: the deterministic gates multiply the weights,
the learner adapts on the support set with the evaluation's ``eval.inner_lr`` for ``max(eval.steps)`` steps
(each weight's step times its gate squared, as ``meta.adapt`` does; pruned weights stay zero) and predicts the
query set. To evaluate on the config's own held-out tasks, or to restore the whole ``MetaState`` and keep
training, rebuild the experiment at the floor that reads configs: ``experiments.build.load(workdir)``.
"""

import json
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from metaprune_jax import checkpoint
from metaprune_jax import types
from metaprune_jax.export import model as export_model
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import masking

MODEL_SPEC_FILE = 'model_spec.json'


class Run(NamedTuple):
  """A trained run, loaded.

  Attributes:
    config: the run's resolved config (``workdir/config.json``).
    meta_params: ``{'params', 'gate_logits' (None when dense), *groups}`` as numpy arrays.
    step: the meta-step of the checkpoint read.
    multiplier: the Lagrange multiplier at that step.
    spec: the model spec (``export.model``), or None when ``predict`` is unavailable (``unavailable`` says why).
    masks: the deterministic gates mirroring ``params`` (exact 0 where pruned), or None for a dense run.
    masked_params: ``params * masks``: the weights the predictor starts from.
    apply: ``(params, inputs) -> outputs`` of the network (a prototypical network's embedding), jitted.
    predict: ``(support_inputs, support_targets, query_inputs) -> query outputs`` of one task after adapting,
      jitted; inputs ``[support, ...]`` / ``[query, ...]``, the signature of ``ExportedModel.predict``.
    evaluate: ``TaskBatch [tasks, ...] -> [tasks]``: each task's query MSE (regression) or accuracy after
      adapting.
    unavailable: why ``spec`` is None (``predict`` and ``evaluate`` raise it), else None.
  """
  config: ml_collections.ConfigDict
  meta_params: dict
  step: int
  multiplier: float
  spec: dict | None
  masks: dict | None
  masked_params: dict
  apply: Callable
  predict: Callable
  evaluate: Callable
  unavailable: str | None


def _read_model_spec(workdir: str) -> tuple[dict | None, hard_concrete.HardConcrete, str | None]:
  """``(spec, hard-concrete constants, why the spec is missing)`` from ``workdir/model_spec.json``."""
  path = epath.Path(workdir) / MODEL_SPEC_FILE
  if not path.exists():
    return None, hard_concrete.HardConcrete(), (
        f'{workdir!r} has no {MODEL_SPEC_FILE} (it was trained before runs wrote one): rebuild it with '
        'experiments.build.load(workdir) instead.')
  document = json.loads(path.read_text())
  return document['spec'], hard_concrete.HardConcrete(**document['hard_concrete']), document.get('unavailable')


def _refuse(reason: str) -> Callable:
  def refused(*args, **kwargs):
    del args, kwargs
    raise ValueError(reason)
  return refused


def _task_metric(spec: dict, outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """One task's query MSE, or accuracy, from ``outputs`` ``[query, ...]``."""
  if spec['loss'] == 'mse':
    return jnp.mean((outputs - targets) ** 2)
  return jnp.mean(jnp.argmax(outputs, -1) == targets)


def load_run(workdir: str, step: int | None = None) -> Run:
  """Loads the run in ``workdir`` (newest checkpoint, or ``step``) with a predictor for new tasks.

  Reads files only, never ``experiments``: the library is the floor below the launchers (module docstring).

  Args:
    workdir: a folder written by ``python -m experiments.maml_prune`` or ``experiments.train.run``.
    step: a checkpointed meta-step; the newest when None.

  Returns:
    A ``Run``; ``run.predict(support_inputs, support_targets, query_inputs)`` adapts to a new task.

  Raises:
    FileNotFoundError: ``workdir`` has no ``config.json`` or no checkpoint (the message names it).
    ValueError: the checkpoint is corrupt or unreadable.
  """
  trained = checkpoint.load_run(workdir, step)
  spec, hc, unavailable = _read_model_spec(workdir)
  params = jax.tree.map(jnp.asarray, trained.meta_params['params'])
  gate_logits = trained.meta_params.get('gate_logits')
  masks = None if gate_logits is None else hard_concrete.deterministic_gates(
      jax.tree.map(jnp.asarray, gate_logits), hc)
  masked_params = masking.apply_masks(params, masks)
  if spec is None:
    refused = _refuse(unavailable)
    return Run(trained.config, trained.meta_params, trained.step, trained.multiplier, None, masks, masked_params,
               refused, refused, refused, unavailable)
  inner_lrs = trained.meta_params.get('inner_lrs')
  inner_lrs = None if inner_lrs is None else jax.tree.map(jnp.asarray, inner_lrs)
  # meta.adapt moves the masked weight m * w by inner_lr * m**2 * grad; predict_fn scales each step by its mask.
  step_scales = None if masks is None else jax.tree.map(jnp.square, masks)
  predict = export_model.predict_fn(spec, masked_params, step_scales, inner_lrs)

  @jax.jit
  def evaluate(tasks: types.TaskBatch) -> jax.Array:
    outputs = jax.vmap(predict, in_axes=(0, 0, 0))(tasks.support_inputs, tasks.support_targets,
                                                   tasks.query_inputs)
    return jax.vmap(lambda out, y: _task_metric(spec, out, y), in_axes=(0, 0))(outputs, tasks.query_targets)

  return Run(trained.config, trained.meta_params, trained.step, trained.multiplier, spec, masks, masked_params,
             jax.jit(export_model.apply_fn(spec)), predict, evaluate, None)
