"""Omniglot per-layer allocations on one FLOPs budget: rl vs uniform vs ERK vs L0, same fine-tune; prints JSON lines.

``python -m benchmarks.allocation_flops_budget --workdir=W --target=0.9 --seed=S [--finetune_steps=20
--episodes=30 --split=test]``, then ``python -m experiments.allocation_report --workdirs=W0,W1,W2``.

The frontier's Omniglot config (``experiments/configs/frontier_omniglot.py``) with ``pruning.budget='flops'``:
the budget is ``1 - target`` of the dense Conv-4's FLOPs. Points of ``frontier.run_point`` in one process
(``--methods``): ``uniform_budget`` and ``erk_budget`` (the fixed rules' counts on that FLOPs budget, filled by
magnitude), ``rl`` (the controller's allocation; its rewards always come from validation characters), ``l0``
(the keep ratios hard-concrete gates learn on the same config and seed, projected onto the budget, filled by
magnitude) and ``l0_l0_fill`` (the same counts filled by the gates' logits). ``--split`` is the split of the final
600-episode evaluation.
WORKSPACE.md ("Learned layer-wise budgets") has the numbers this measured.
"""

import json
import os
import time

from absl import app
from absl import flags

from experiments import baselines
from experiments import frontier
from experiments.configs import frontier_omniglot

_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder (frontier points).', required=True)
_TARGET = flags.DEFINE_float('target', 0.9, 'Sparsity target: the budget is (1 - target) x dense FLOPs.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the three points.')
_FINETUNE_STEPS = flags.DEFINE_integer('finetune_steps', 20, 'pruning.rl_finetune_steps of each candidate.')
_EPISODES = flags.DEFINE_integer('episodes', 30, 'pruning.rl_episodes of the controller.')
_SPLIT = flags.DEFINE_string('split', 'test', "Split of the final evaluation ('validation' or 'test').")
_METHODS = flags.DEFINE_list('methods', ['uniform_budget', 'erk_budget', 'rl', 'l0'],
                             'Frontier methods to run (experiments.baselines.BASELINES), in order.')


def main(argv):
  del argv
  unknown = [m for m in _METHODS.value if m not in baselines.BASELINES]
  if unknown:
    raise app.UsageError(f'--methods: unknown {unknown}; valid: {", ".join(baselines.BASELINES)}.')
  config = frontier_omniglot.get_config()
  config.pruning.budget = 'flops'
  config.eval.split = _SPLIT.value
  config.pruning.rl_finetune_steps = _FINETUNE_STEPS.value
  config.pruning.rl_episodes = _EPISODES.value
  config.pruning.rl_candidates = 8
  config.pruning.rl_validation_tasks = 100
  config.frontier.methods = tuple(_METHODS.value)
  config.frontier.sparsities = (_TARGET.value,)
  config.frontier.seeds = (_SEED.value,)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  with open(os.path.join(_WORKDIR.value, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=1))
  for method in _METHODS.value:
    t0 = time.perf_counter()
    record = frontier.run_point(config, method, _TARGET.value, _SEED.value, _WORKDIR.value)
    print(json.dumps({'method': method, 'seconds': time.perf_counter() - t0, 'kept': record['kept_per_layer'],
                      'eval_accuracy': record['eval_accuracy'],
                      'flops': {k: v for k, v in record.items() if 'flops' in k}}), flush=True)


if __name__ == '__main__':
  app.run(main)
