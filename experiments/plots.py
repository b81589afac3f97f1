"""PNG plots of a run: learning curve and sparsity over meta-steps."""

import json

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top


def training_curves(metrics_path: str, out_path: str, title: str = '') -> None:
  """Query loss (log scale) and expected / realised sparsity against the meta-step."""
  with open(metrics_path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  steps = [r['step'] for r in records]
  fig, (ax_loss, ax_sparsity) = plt.subplots(1, 2, figsize=(10, 3.8))
  ax_loss.plot(steps, [r['outer/query_loss'] for r in records], label='query loss (after adaptation)')
  ax_loss.set_yscale('log')
  ax_loss.set_xlabel('meta-step')
  ax_loss.set_ylabel('loss')
  ax_loss.legend()
  ax_sparsity.plot(steps, [r['mask/expected_sparsity'] for r in records], label='expected sparsity')
  ax_sparsity.plot(steps, [r['mask/realised_sparsity'] for r in records], label='realised sparsity')
  ax_sparsity.set_ylim(-0.02, 1.02)
  ax_sparsity.set_xlabel('meta-step')
  ax_sparsity.set_ylabel('fraction of gated weights')
  ax_sparsity.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(out_path, dpi=110)
  plt.close(fig)
