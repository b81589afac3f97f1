"""The launchers' persistent compilation cache and the summary's provenance."""

import json
import os
import subprocess
import sys

from experiments import compilation_cache
from tests.experiments.test_maml_prune import ROOT


def test_a_cache_the_user_chose_is_left_alone():
  assert os.environ.get('JAX_COMPILATION_CACHE_DIR')  # tests/conftest.py sets the suite's cache.
  assert compilation_cache.enable() is None


def test_the_launcher_fills_its_cache_and_records_provenance(tmp_path):
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_')}
  env[compilation_cache.ENV] = str(tmp_path / 'cache')
  result = subprocess.run([sys.executable, '-m', 'experiments.maml_prune', '--task=sinusoid',
                           '--config=experiments/configs/smoke.py', f'--workdir={tmp_path}/run',
                           '--config.outer.num_outer_steps=2', '--config.eval.num_tasks=4'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert os.listdir(tmp_path / 'cache')  # Programs that compiled for over a second were stored.
  provenance = json.loads((tmp_path / 'run' / 'summary.json').read_text())['provenance']
  assert provenance['backend'] == 'cpu' and provenance['num_devices'] >= 1 and provenance['jax']
  assert provenance['commit'] is None or len(provenance['commit']) == 40
