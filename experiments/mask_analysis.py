"""How task-conditioned masks differ across held-out tasks (``--config.gates.mask=meta_pruner`` runs).

``analyse(exp, meta_params)`` draws the run's held-out tasks
(``evaluation.held_out_tasks``, first ``eval.shots`` entry), builds every task's
deterministic mask (hardened to the target in target mode), and reports:

* realised sparsity per task (mean, min, max): does every task meet the target?
* per-layer sparsity (mean and std over tasks): where the meta-pruner prunes;
* mean pairwise Jaccard and Hamming distances between task masks;
* the cost of generating one task's mask (one meta-pruner forward pass, jitted,
  median of repeats) next to one inner fine-tuning step on the same task.

``plot(analysis, path)`` draws per-layer sparsity and the pairwise Jaccard matrix.
"""

import statistics
import time

import jax
import numpy as np
from etils import epath

from experiments import build
from experiments import evaluation
from metaprune_jax.masks import sparsity
from metaprune_jax.meta import inner
from metaprune_jax.meta import meta_pruner


_STRUCTURE_TASKS = 10  # Held-out tasks whose pruned nets' FLOPs are averaged.


def _median_seconds(fn, *args, repeats: int = 20) -> float:
  jax.block_until_ready(fn(*args))  # Compile.
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _named_leaves(tree) -> list[tuple[str, jax.Array]]:
  """``(path string, leaf)`` for every non-None leaf, in tree order (e.g. ``"['Dense_1']['kernel']"``)."""
  return [(jax.tree_util.keystr(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def analyse(exp: build.Experiment, meta_params, *, num_tasks: int = 100) -> dict:
  """Per-task mask statistics on held-out tasks (module docstring)."""
  config, problem = exp.config, exp.problem
  shots = int(config.eval.shots[0])
  ways = (tuple(config.eval.ways) or (None,))[0]
  tasks = evaluation.held_out_tasks(config, problem, shots, ways)
  tasks = jax.tree.map(lambda x: x[:num_tasks], tasks)
  hc = exp.settings.hc
  target = float(config.sparsity.target_sparsity) if config.sparsity.sparsity_mode == 'target' else None
  embedding = config.gates.meta_pruner_embedding
  features_fn = meta_pruner.task_features_fn(problem.embed_fn, embedding=embedding)
  expand_units = problem.expand_units  # RNN hidden-unit coupling for harden and the counters (None: none).
  gain = float(config.gates.get('meta_pruner_modulation_gain', 1.0))  # 1.0: a config from before the field.
  masks_fn = jax.jit(lambda mp, t: meta_pruner.task_masks(mp, t, features_fn, target_sparsity=target, hc=hc,
                                                          expand_units=expand_units, embedding=embedding,
                                                          modulation_gain=gain))
  masks = masks_fn(meta_params, tasks)
  params = meta_params['params']
  gated = sparsity.num_gated_weights(params, meta_params['gate_logits'], expand_units=expand_units)
  # Leaves [T] or None.
  pruned = jax.vmap(lambda m: sparsity.pruned_per_leaf(params, m, expand_units=expand_units))(masks)
  touched = [(name, count, param) for (name, count), param in zip(
      _named_leaves(pruned), jax.tree.leaves(jax.tree.map(lambda c, p: None if c is None else p, pruned, params,
                                                          is_leaf=lambda x: x is None)))]
  zeros_per_layer = np.stack([np.asarray(count) for _, count, _ in touched], axis=1)  # [T, L]
  layer_sizes = np.array([param.size for _, _, param in touched])
  per_task = zeros_per_layer.sum(1) / gated
  per_layer = zeros_per_layer / layer_sizes[None, :]
  task_list = [jax.tree.map(lambda m, i=i: m[i], masks) for i in range(per_task.shape[0])]
  distances = meta_pruner.mask_distances(task_list)
  jaccard_matrix = np.asarray(meta_pruner.pairwise_mask_distances(task_list[:20])['jaccard'])

  one = jax.tree.map(lambda x: x[:1], tasks)
  mask_seconds = _median_seconds(masks_fn, meta_params, one)  # Compiles for one task first.
  single = jax.tree.map(lambda x: x[0], tasks)
  step_seconds = _median_seconds(jax.jit(lambda p, t: inner.sgd_step(
      lambda q: problem.loss_fn(q, t.support_inputs, t.support_targets), p, float(config.eval.inner_lr))),
                                 params, single)
  analysis = {
      'num_tasks': int(per_task.shape[0]), 'shots': shots, 'target_sparsity': target,
      'realised_sparsity': {'mean': float(per_task.mean()), 'min': float(per_task.min()),
                            'max': float(per_task.max())},
      'per_layer_sparsity': {name: {'mean': float(per_layer[:, i].mean()), 'std': float(per_layer[:, i].std())}
                             for i, (name, _, _) in enumerate(touched)},
      'mean_pairwise_jaccard': float(distances['jaccard']),
      'mean_pairwise_hamming': float(distances['hamming']),
      'jaccard_matrix': jaccard_matrix.round(4).tolist(),
      'mask_generation_seconds': mask_seconds,
      'inner_step_seconds': step_seconds,
  }
  if problem.flops_fn is not None:  # Weight / channel sparsity and FLOPs of each task's pruned net, averaged.
    structures = [problem.flops_fn(params, task_masks) for task_masks in task_list[:_STRUCTURE_TASKS]]
    analysis['structure'] = {key: float(np.mean([s[key] for s in structures])) for key in structures[0]}
    analysis['structure']['num_tasks'] = len(structures)
  return analysis


def plot(analysis: dict, path: str) -> None:
  """Per-layer sparsity across tasks and the pairwise Jaccard distances of the first 20 tasks."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  names = list(analysis['per_layer_sparsity'])
  means = [analysis['per_layer_sparsity'][n]['mean'] for n in names]
  stds = [analysis['per_layer_sparsity'][n]['std'] for n in names]
  left.bar(range(len(names)), means, yerr=stds, capsize=3)
  left.set_xticks(range(len(names)), [n.replace("['", '').replace("']", '/') for n in names], rotation=30,
                  ha='right', fontsize=7)
  left.set_ylabel('sparsity (mean +- std over tasks)')
  left.set_title(f"per-layer sparsity, {analysis['num_tasks']} held-out tasks")
  image = right.imshow(np.array(analysis['jaccard_matrix']), cmap='viridis', vmin=0)
  fig.colorbar(image, ax=right)
  right.set_title(f"pairwise Jaccard distance (mean {analysis['mean_pairwise_jaccard']:.3f})")
  fig.tight_layout()
  with epath.Path(path).open('wb') as f:  # Local or gs://.
    fig.savefig(f, format='png', dpi=100)
  plt.close(fig)
