"""``experiments.evaluate`` on generated PNG episode folders, end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from PIL import ImageDraw

from tests import shared_data
from tests.experiments.test_maml_prune import ROOT

pytestmark = pytest.mark.skipif(not os.path.isdir(shared_data.OMNIGLOT_DIR), reason='shared Omniglot data missing')


def _write_episode(root, name, ways, shots, queries, size, rng):
  """Class c is a black line at angle c on white paper, jittered per image."""
  for side, count in (('support', shots), ('query', queries)):
    for c in range(ways):
      folder = os.path.join(root, name, side, f'class_{c}')
      os.makedirs(folder)
      for i in range(count):
        image = Image.new('L', (size, size), 255)
        angle = np.pi * c / ways + rng.normal(0, 0.05)
        centre = size / 2 + rng.normal(0, 1, 2)
        dx, dy = 0.4 * size * np.cos(angle), 0.4 * size * np.sin(angle)
        ImageDraw.Draw(image).line([(centre[0] - dx, centre[1] - dy), (centre[0] + dx, centre[1] + dy)],
                                   fill=0, width=max(1, size // 10))
        image.save(os.path.join(folder, f'{i}.png'))


def test_evaluate_a_trained_run_on_user_episodes(tiny_protonet_run, tmp_path):
  rng = np.random.default_rng(0)
  _write_episode(tmp_path / 'episodes', 'a', ways=3, shots=2, queries=2, size=40, rng=rng)
  _write_episode(tmp_path / 'episodes', 'b', ways=5, shots=1, queries=3, size=64, rng=rng)
  result = subprocess.run([sys.executable, '-m', 'experiments.evaluate', f'--workdir={tiny_protonet_run}',
                           f'--episodes={tmp_path}/episodes', f'--output={tmp_path}/out.json'],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'mean accuracy over 2 episodes' in result.stdout and 'a: 3-way' in result.stdout
  out = json.loads((tmp_path / 'out.json').read_text())
  assert [e['ways'] for e in out['episodes']] == [3, 5] and out['episodes'][1]['query'] == 15
  assert all(0.0 <= e['accuracy'] <= 1.0 for e in out['episodes'])
  assert out['mean_accuracy'] == pytest.approx(np.mean([e['accuracy'] for e in out['episodes']]))


def test_missing_run_names_the_flag(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'experiments.evaluate', f'--workdir={tmp_path}',
                           f'--episodes={tmp_path}'], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0 and '--workdir=' in result.stderr and 'config.json' in result.stderr
