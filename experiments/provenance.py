"""What produced a result: the code's commit and the JAX build and devices, for ``export.json`` and summaries."""

import datetime
import os
import platform
import socket
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


def provenance(started: float | None = None) -> dict:
  """The commit, JAX / jaxlib versions, backend, devices, processes and host of this process.

  ``started``: a ``time.time()`` stamp recorded as ``started`` (UTC, ISO 8601), e.g. when a run (or the segment
  of a resumed run) began.
  """
  devices = jax.devices()
  record = {**git_commit(), 'jax': jax.__version__, 'jaxlib': jax.lib.__version__ if hasattr(jax.lib, '__version__')
            else None, 'backend': jax.default_backend(), 'devices': [d.device_kind for d in devices],
            'num_devices': len(devices), 'process_count': jax.process_count(), 'host': socket.gethostname(),
            'python': platform.python_version()}
  if started is not None:
    record['started'] = datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(timespec='seconds')
  return record
