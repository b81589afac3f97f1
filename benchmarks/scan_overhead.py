"""What a ``lax.scan`` over one inner step costs on this backend; prints JSON.

The paper-configuration MAML step (2x40 MLP, meta-batch 25, K=10, one inner step,
second order, Adam) written three ways in one process and timed round-robin:
the inner step as straight-line code, through ``metaprune_jax.meta.inner.adapt``
(a ``lax.scan``), and the same with ``unroll=True``.

Usage: python -m benchmarks.scan_overhead [--steps=2000 --repeats=7]
"""

import json
import os

import jax
import jax.numpy as jnp
from absl import app

from benchmarks import meta_step_speed
from metaprune_jax import losses
from metaprune_jax.meta import inner
from metaprune_jax.nets import mlp

# --steps and --repeats are meta_step_speed's flags (defined on import).


def _step(inner_mode: str):
  model = mlp.make_mlp((40, 40), 1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))['params']
  loss = losses.mse_loss(model.apply)

  def task_loss(p, xs, ys, xq, yq):
    support = lambda q: loss(q, xs, ys)
    if inner_mode == 'straight_line':
      g = jax.grad(support)(p)
      adapted = jax.tree.map(lambda a, b: a - 0.01 * b, p, g)
    else:
      adapted = inner.adapt(support, p, inner_lr=0.01, num_inner_steps=1, unroll=inner_mode == 'scan_unrolled')
    return loss(adapted, xq, yq)

  return meta_step_speed.plain_maml_step(task_loss, params)


def main(argv):
  del argv
  results = meta_step_speed._time_interleaved(  # pylint: disable=protected-access
      {mode: _step(mode) for mode in ('straight_line', 'scan', 'scan_unrolled')}, meta_step_speed._STEPS.value, meta_step_speed._REPEATS.value)  # pylint: disable=protected-access
  print(json.dumps({'benchmark': 'scan_overhead', 'load_average': list(os.getloadavg()),
                    'results': results}, indent=2))


if __name__ == '__main__':
  app.run(main)
