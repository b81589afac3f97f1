"""The library's sinusoid meta-step against the same step of another checkout, in one process; prints JSON.

``python -m benchmarks.step_speed_vs_checkout --other=/path/to/old/checkout`` builds the variants of
``benchmarks/meta_step_speed.py:_library`` (2x40 MLP, meta-batch 25, second order; dense and gated, one
step per call and ``--steps_per_call`` per call) from this checkout, then imports the other checkout's
``metaprune_jax`` and ``benchmarks.meta_step_speed`` under the same names (the first copies are dropped from
``sys.modules`` once their steps are built), builds the same variants there, and times all of them
round-robin in this one process (``meta_step_speed._time_interleaved``: compile apart, then ``--repeats``
rounds of ``--steps`` meta-steps each, medians). ``ratio`` is this checkout's median rate over the other's:
below 1 is slower. Make the other checkout with ``git worktree add /tmp/old REV``.
"""

import argparse
import importlib
import json
import sys

from absl import flags

_PACKAGES = ('metaprune_jax', 'benchmarks')


def _variants(speed_module, steps_per_call: int) -> dict:
  """``{name: (step, state)}``: dense / gated at one step per call, and the sinusoid launcher's K per call."""
  library = speed_module._library  # pylint: disable=protected-access
  return {
      'dense': library(False, False, 'weight'),
      'gated': library(True, False, 'weight'),
      f'dense_python_loop_{steps_per_call}_per_call': library(False, False, 'weight', python_loop=True,
                                                               steps_per_call=steps_per_call),
      f'gated_python_loop_{steps_per_call}_per_call': library(True, False, 'weight', python_loop=True,
                                                               steps_per_call=steps_per_call),
  }


def _forget_packages() -> None:
  """Drops the loaded copies of the packages and the absl flags their modules defined (the other copy
  defines them again)."""
  by_module = flags.FLAGS.flags_by_module_dict()
  for name in [n for n in sys.modules if n.split('.')[0] in _PACKAGES]:
    for flag in by_module.get(name, []):
      if flag.name in flags.FLAGS:
        delattr(flags.FLAGS, flag.name)
    del sys.modules[name]


def _import_from(root: str):
  """``benchmarks.meta_step_speed`` (and the ``metaprune_jax`` it imports) from the checkout at ``root``."""
  _forget_packages()
  finders = [f for f in sys.meta_path if 'editable' in type(f).__module__.lower()]  # pip install -e . finders.
  for finder in finders:
    sys.meta_path.remove(finder)
  sys.path.insert(0, root)
  importlib.invalidate_caches()
  try:
    return importlib.import_module('benchmarks.meta_step_speed')
  finally:
    sys.path.remove(root)
    sys.meta_path.extend(finders)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--other', required=True, help='Path of the other checkout (its root folder).')
  parser.add_argument('--steps', type=int, default=2000, help='Meta-steps per timed round.')
  parser.add_argument('--repeats', type=int, default=5, help='Timed rounds per variant (median reported).')
  parser.add_argument('--steps_per_call', type=int, default=50, help='K of the K-steps-per-call variants.')
  args = parser.parse_args()
  from benchmarks import meta_step_speed  # pylint: disable=import-outside-toplevel
  k = args.steps_per_call
  here = meta_step_speed.__file__
  time_interleaved = meta_step_speed._time_interleaved  # pylint: disable=protected-access
  ours = _variants(meta_step_speed, k)
  other_module = _import_from(args.other)
  theirs = _variants(other_module, k)
  variants = {**{f'this/{n}': v for n, v in ours.items()}, **{f'other/{n}': v for n, v in theirs.items()}}
  per_call = {name: k for name in variants if name.endswith('_per_call')}
  results = time_interleaved(variants, args.steps, args.repeats, per_call=per_call)
  ratios = {n: round(results[f'this/{n}']['steps_per_sec_median'] / results[f'other/{n}']['steps_per_sec_median'], 3)
            for n in ours}
  print(json.dumps({'this': here, 'other': other_module.__file__, 'steps': args.steps, 'repeats': args.repeats,
                    'ratio_this_over_other': ratios, 'results': results}, indent=1))


if __name__ == '__main__':
  main()
