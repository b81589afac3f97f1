"""4 forced host devices give the same meta-steps as 1 (subprocess: XLA_FLAGS must precede the jax import)."""

import json
import os
import subprocess
import sys

import pytest

from experiments import build
from experiments.configs import smoke
from tests import test_utils

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CHILD = r'''
import json, os, sys
import jax
import numpy as np
from experiments import build, problems, train
from experiments.configs import smoke
from metaprune_jax.masks import hard_concrete
from metaprune_jax.meta import gate_source
from metaprune_jax.meta import learners
from metaprune_jax.meta import optimizer as outer_optimizer
from metaprune_jax.meta import sharding
from metaprune_jax.meta import step as meta_step
from metaprune_jax.meta.settings import Execution
from metaprune_jax.meta.settings import InnerSettings

assert jax.device_count() == 4, jax.devices()
config = smoke.get_config()
problem = problems.get_problem(config)

def run_steps(mesh, num_steps=6):
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  params = problem.init_params(init_key)
  gates = hard_concrete.init_gate_logits(params, 'weight', init_logit=float(config.gates.init_logit))
  optimizer = outer_optimizer.outer_optimizer({'params': 1e-3, 'gate_logits': 1e-2})
  state = sharding.replicate(meta_step.init_meta_state(train_key, params, gates, optimizer), mesh)
  learner = learners.get_learner('maml', loss_fn=problem.loss_fn,
                                 execution=Execution(python_loop=bool(config.execution.python_loop)))
  settings = InnerSettings(inner_lr=float(config.inner.inner_lr), num_inner_steps=int(config.inner.num_inner_steps))
  step_fn = meta_step.compile_step(
      meta_step.make_meta_step(problem.train_sampler, learner, optimizer,
                               meta_batch_size=int(config.outer.meta_batch_size), settings=settings,
                               gates=gate_source.shared_gates(), objective=build.l0(config), mesh=mesh),
      mesh=mesh)
  losses = []
  for _ in range(num_steps):
    state, metrics = step_fn(state)
    losses.append(float(metrics['outer/query_loss']))
  hlo = step_fn.lower(state).compile().as_text()
  leaf = jax.tree.leaves(state.meta_params)[0]
  return state, losses, hlo, len(leaf.sharding.device_set)

mesh = sharding.make_mesh(4)
one, losses_1, _, devices_1 = run_steps(None)
four, losses_4, hlo_4, devices_4 = run_steps(mesh)
diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
           for a, b in zip(jax.tree.leaves(one.meta_params), jax.tree.leaves(four.meta_params)))
out = {'losses_1': losses_1, 'losses_4': losses_4, 'max_param_diff': diff, 'devices_1': devices_1,
       'devices_4': devices_4, 'all_reduce': 'all-reduce' in hlo_4, 'all_devices': sharding.resolve_num_devices(0)}
config.outer.num_outer_steps, config.run.checkpoint_every_steps, config.eval.num_tasks = 20, 10, 8
for n in (1, 4):
  config.run.num_devices = n
  summary = train.run(config, os.path.join(sys.argv[1], f'devices_{n}'))
  out[f'eval_{n}'] = summary['eval']['sparse']['shots_5']['step_1']['mean']
print('RESULT ' + json.dumps(out))
'''


# XLA:CPU runs each simulated device's program on a shared thread pool; on a host with fewer cores than
# simulated devices (2 here) its all-reduce rendezvous can starve and deadlock (XLA aborts with
# "Termination timeout for `all reduce ..."). That is the simulator, not the sharding: such a run is
# retried, any other failure is not. Real multi-device hosts give each device its own stream.
XLA_FLAGS = ('--xla_force_host_platform_device_count=4 --xla_cpu_collective_call_warn_stuck_timeout_seconds=10 '
             '--xla_cpu_collective_call_terminate_timeout_seconds=20')
STARVED = 'Termination timeout for `all reduce'


def run_on_four_host_devices(code: str, *args, attempts: int = 3, timeout: int = 500):
  env = {**os.environ, 'PYTHONPATH': ROOT, 'XLA_FLAGS': XLA_FLAGS, 'JAX_PLATFORMS': 'cpu'}
  for _ in range(attempts):
    result = subprocess.run([sys.executable, '-c', code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode == 0 or STARVED not in result.stderr:
      return result
  return result


def test_four_host_devices_match_one_device(tmp_path):
  result = run_on_four_host_devices(_CHILD, str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.split('RESULT ')[-1])
  assert out['devices_1'] == 1 and out['devices_4'] == 4  # State replicated on all 4 devices.
  assert out['all_reduce']  # The task mean became a cross-device reduction: the batch really is split.
  assert out['all_devices'] == 1  # num_devices=0 does not shard over simulated CPU devices (they share cores).
  test_utils.assert_close(out['losses_4'], out['losses_1'], rtol=1e-4, atol=1e-6)
  assert out['max_param_diff'] < 1e-4, out['max_param_diff']
  test_utils.assert_close(out['eval_4'], out['eval_1'], rtol=1e-3)
  for n in (1, 4):
    assert (tmp_path / f'devices_{n}' / 'checkpoints' / '20').is_dir()


@pytest.mark.parametrize('value,match', [(3, 'must divide --config.outer.meta_batch_size=4'),
                                         (-1, 'must be an integer >= 0')])
def test_num_devices_is_validated(value, match):
  config = smoke.get_config()
  config.run.num_devices = value
  with pytest.raises(ValueError, match=f'--config.run.num_devices={value} is invalid: {match}'):
    build.check(config)
