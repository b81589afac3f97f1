"""The ``sequence`` bar: meta-learned init vs the same net trained from scratch; prints JSON.

Meta-trains (or resumes, from ``--workdir``) the dense and the gated model of
``experiments/configs/sequence.py`` (gated: per-weight hard-concrete gates,
target 0.9, hardened to exactly 90% at 80% of the run), then, on the same
``--num_tasks`` held-out tasks (``evaluation.held_out_tasks``: keyed off the seed,
never the training stream), reports the query MSE of:

* ``meta``: the meta-learned init after ``--num_inner_steps`` SGD steps on the
  support set (the inner lr of the config);
* ``scratch_sgd``: the same net from a fresh random init per task (the config's
  initialiser), the same number of SGD steps at the same lr;
* ``scratch_adam``: the same net from scratch with ``--scratch_adam_steps`` Adam
  steps on the support set, at every lr in ``--scratch_adam_lrs`` (the best
  is the one compared: a generous scratch budget).

At 90% sparsity the scratch nets use the meta-learned model's mask (exactly its
pruned weights held at zero), which favours scratch. Per method: mean +- 95% CI
(1.96 sd / sqrt(n)) over non-diverged tasks and the diverged count
(``evaluate.summarise``); ``ratio`` = best scratch mean / meta mean, and
``ratio_lower`` the same with both means moved to the unfavourable ends of their
CIs. The bar: ``ratio >= 5`` dense and sparse.

Usage: python -m benchmarks.sequence_vs_scratch --workdir=runs/sequence_bar [--seed=0 --num_tasks=600]
"""

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app
from absl import flags
from absl import logging

from experiments import build
from experiments import evaluation
from experiments import train
from experiments.configs import sequence as sequence_config
from metaprune_jax.masks import hard_concrete
from metaprune_jax.masks import masking
from metaprune_jax.meta import evaluate

_WORKDIR = flags.DEFINE_string('workdir', 'runs/sequence_bar', 'Holds the two meta-training runs (resumed).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seeds training and the held-out tasks.')
_NUM_TASKS = flags.DEFINE_integer('num_tasks', 600, 'Held-out tasks.')
_SHOTS = flags.DEFINE_integer('shots', 5, 'Support windows per task.')
_NUM_INNER_STEPS = flags.DEFINE_integer('num_inner_steps', 5, 'SGD steps for meta and scratch_sgd.')
_ADAM_STEPS = flags.DEFINE_integer('scratch_adam_steps', 100, 'Adam steps of the generous scratch baseline.')
_ADAM_LRS = flags.DEFINE_list('scratch_adam_lrs', ['0.001', '0.003', '0.01', '0.03'], 'Adam lrs tried.')
_OUTER_STEPS = flags.DEFINE_integer('num_outer_steps', None, 'Overrides the config (a quick check).')
_MODELS = flags.DEFINE_list('models', ['dense', 'sparse_0.9'], 'Which of the two models to compare.')
_CHUNK = 100


def _config(mask: str) -> ml_collections.ConfigDict:
  config = sequence_config.get_config()
  config.seed = _SEED.value
  config.gates.mask = mask
  config.eval.dense_reference = False
  config.eval.num_tasks = _NUM_TASKS.value
  if _OUTER_STEPS.value:
    config.outer.num_outer_steps = _OUTER_STEPS.value
    config.sparsity.sparsity_warmup_steps = max(1, _OUTER_STEPS.value // 3)
  return config


def _make_scratch(problem, optimizer_name: str, num_steps: int):
  """Jitted ``(keys, tasks, masks, lr) -> query losses`` after ``num_steps`` from a fresh init per task.

  The learning rate is an argument (``optax.inject_hyperparams``), so every lr
  shares one compilation.
  """
  optimizer = optax.inject_hyperparams(getattr(optax, optimizer_name))(learning_rate=0.0)

  def one(init_key, task, masks, lr):
    params = problem.init_params(init_key)

    def support_loss(p):
      return problem.loss_fn(masking.apply_masks(p, masks), task.support_inputs, task.support_targets)

    def step(carry, _):
      p, opt_state = carry
      updates, opt_state = optimizer.update(jax.grad(support_loss)(p), opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), None
    opt_state = optimizer.init(params)
    opt_state.hyperparams['learning_rate'] = lr
    (params, _), _ = jax.lax.scan(step, (params, opt_state), None, length=num_steps)
    return problem.loss_fn(masking.apply_masks(params, masks), task.query_inputs, task.query_targets)
  return jax.jit(jax.vmap(one, in_axes=(0, 0, None, None)))


def _scratch_losses(run, tasks, masks, lr: float, key) -> np.ndarray:
  """Per-task query losses of a ``_make_scratch`` function, in chunks of ``_CHUNK`` tasks."""
  keys = jax.random.split(key, tasks.support_inputs.shape[0])
  out = []
  for start in range(0, len(keys), _CHUNK):
    chunk = jax.tree.map(lambda x, s=start: x[s:s + _CHUNK], tasks)
    out.append(np.asarray(run(keys[start:start + _CHUNK], chunk, masks, jnp.float32(lr)), np.float64))
  return np.concatenate(out)


def _summary(values, before, config):
  return evaluate.summarise(values, before, divergence_threshold=float(config.eval.divergence_threshold),
                            divergence_ratio=float(config.eval.divergence_ratio))


def _compare(name: str, config) -> dict:
  workdir = os.path.join(_WORKDIR.value, name)
  os.makedirs(workdir, exist_ok=True)
  exp = build.build(config)
  problem = exp.problem
  t0 = time.perf_counter()
  state, timings = train.train(exp, workdir)
  train_seconds = time.perf_counter() - t0
  meta_params = state.meta_params
  hc = exp.settings.hc
  gate_logits = meta_params.get('gate_logits')
  masks = None if gate_logits is None else hard_concrete.deterministic_gates(gate_logits, hc)
  tasks = evaluation.held_out_tasks(config, problem, _SHOTS.value)
  t0 = time.perf_counter()
  steps = _NUM_INNER_STEPS.value
  settings = exp.settings._replace(num_inner_steps=steps, inner_lr=float(config.eval.inner_lr))
  traces = evaluate.learner_traces(exp.eval_learner, meta_params, tasks, settings=settings,
                                   gate_mode='off' if masks is None else 'deterministic')['loss']
  before = traces[:, 0]  # The meta init's loss before adapting: the divergence reference for every method.
  results = {'meta': _summary(traces[:, steps], before, config)}
  scratch_key = jax.random.fold_in(jax.random.key(config.seed), 0x5C7A)
  sgd = _scratch_losses(_make_scratch(problem, 'sgd', steps), tasks, masks, float(config.eval.inner_lr),
                        scratch_key)
  results['scratch_sgd'] = _summary(sgd, None, config)
  adam, run_adam = {}, _make_scratch(problem, 'adam', _ADAM_STEPS.value)
  for lr in _ADAM_LRS.value:
    losses = _scratch_losses(run_adam, tasks, masks, float(lr), scratch_key)
    adam[lr] = _summary(losses, None, config)
  best_lr = min(adam, key=lambda lr: adam[lr]['mean'])
  results['scratch_adam'] = {**adam[best_lr], 'lr': float(best_lr),
                             'all_lrs': {lr: adam[lr]['mean'] for lr in adam}}
  meta = results['meta']
  best = min((results['scratch_sgd'], results['scratch_adam']), key=lambda r: r['mean'])
  report = exp.sparsity_report(meta_params)
  return {
      'realised_sparsity': report['realised_sparsity'],
      'nonzero_params': report['nonzero_params'], 'total_params': report['total_params'],
      'results': results,
      'ratio': best['mean'] / meta['mean'],
      'ratio_lower': (best['mean'] - best['ci95']) / (meta['mean'] + meta['ci95']),
      'meets_5x': bool(best['mean'] / meta['mean'] >= 5.0),
      'train_seconds': train_seconds, 'meta_steps_per_sec': timings.get('train_seconds') and
      (int(config.outer.num_outer_steps) - timings['start_step'] - 1) / timings['train_seconds'],
      'eval_seconds': time.perf_counter() - t0,
  }


def main(argv):
  del argv
  start = time.perf_counter()
  out = {'benchmark': 'sequence_vs_scratch', 'seed': _SEED.value, 'num_tasks': _NUM_TASKS.value,
         'shots': _SHOTS.value, 'num_inner_steps': _NUM_INNER_STEPS.value,
         'scratch_adam_steps': _ADAM_STEPS.value, 'metric': 'query mse',
         'ci': '95% normal interval over non-diverged tasks: 1.96 * std / sqrt(n)',
         'machine': f'{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, '
                    f'jax {jax.__version__}, {jax.devices()[0].platform}'}
  for name, mask in (('dense', 'none'), ('sparse_0.9', 'hard_concrete')):
    if name not in _MODELS.value:
      continue
    config = _config(mask)
    build.check(config)
    out[name] = _compare(name, config)
    logging.info('%s: %s', name, json.dumps(out[name]))
  out['wall_seconds'] = time.perf_counter() - start
  print(json.dumps(out, indent=2))


if __name__ == '__main__':
  app.run(main)
