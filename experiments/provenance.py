"""What produced a result: the code's commit and the JAX build and devices, for ``export.json`` and summaries."""

import os
import subprocess

import jax


def git_commit(path: str | None = None) -> dict:
  """``{'commit': sha or None, 'dirty': bool or None}`` of the checkout holding ``path`` (this package)."""
  where = path or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    sha = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=where, capture_output=True, text=True, check=True,
                         timeout=10).stdout.strip()
    status = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=where,
                            capture_output=True, text=True, check=True, timeout=10).stdout
  except (OSError, subprocess.SubprocessError):
    return {'commit': None, 'dirty': None}
  return {'commit': sha, 'dirty': bool(status.strip())}


def provenance() -> dict:
  """The commit, JAX / jaxlib versions, backend and devices of this process."""
  devices = jax.devices()
  return {**git_commit(), 'jax': jax.__version__, 'jaxlib': jax.lib.__version__ if hasattr(jax.lib, '__version__')
          else None, 'backend': jax.default_backend(), 'devices': [d.device_kind for d in devices],
          'num_devices': len(devices)}
