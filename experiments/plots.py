"""PNG plots of a run: learning curve and sparsity over meta-steps."""

import json

import matplotlib
import numpy as np
from etils import epath

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def training_curves(metrics_path: str, out_path: str, title: str = '') -> None:
  """Query loss (log scale) and expected / realised sparsity against the meta-step (paths local or ``gs://``)."""
  records = [json.loads(line) for line in epath.Path(metrics_path).read_text().splitlines() if line.strip()]
  steps = np.array([r['step'] for r in records]) / 1000.0
  loss = np.array([r['outer/query_loss'] for r in records])
  fig, (ax_loss, ax_sparsity) = plt.subplots(1, 2, figsize=(10, 3.8))
  ax_loss.plot(steps, loss, color='tab:blue', alpha=0.3, label='query loss, one meta-batch')
  if len(loss) >= 5:
    window = max(5, len(loss) // 15)
    smooth = np.convolve(loss, np.ones(window) / window, mode='valid')
    ax_loss.plot(steps[window - 1:], smooth, color='tab:blue', label=f'mean of last {window} log points')
  ax_loss.set_yscale('log')
  ax_loss.set_xlabel('meta-step (thousands)')
  ax_loss.set_ylabel('loss')
  ax_loss.legend()
  ax_sparsity.plot(steps, [r['mask/expected_sparsity'] for r in records], label='expected sparsity')
  ax_sparsity.plot(steps, [r['mask/realised_sparsity'] for r in records], label='realised sparsity')
  ax_sparsity.set_ylim(-0.02, 1.02)
  ax_sparsity.set_xlabel('meta-step (thousands)')
  ax_sparsity.set_ylabel('fraction of gated weights')
  ax_sparsity.legend()
  fig.suptitle(title)
  fig.tight_layout()
  with epath.Path(out_path).open('wb') as f:
    fig.savefig(f, format='png', dpi=110)
  plt.close(fig)
