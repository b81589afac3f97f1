"""Atomic checkpoints of a ``MetaState`` with orbax (``ocp.CheckpointManager``), and loading a trained run.

Layout: ``workdir/checkpoints/<step>/{state,host}``. ``state`` holds every array
of the ``MetaState`` (params, gate logits, optimiser state, multiplier, step and
the PRNG key as ``jax.random.key_data``); ``host`` is a small JSON dict of
host-side counters (e.g. skipped non-finite updates). Orbax writes into a
temporary directory and renames it into place only when every file is written,
so a run killed (even with SIGKILL) mid-save leaves the previous checkpoint as
the newest complete one; the partial directory is ignored and cleaned up. On
``gs://`` (no atomic rename) orbax writes the step directory in place and marks
it complete with a ``commit_success.txt`` file last; ``list_checkpoints`` counts
only marked ones there. Every path goes through ``etils.epath``, so a workdir may
be a local folder or a URI orbax accepts (``gs://bucket/run``); every process
of a multi-host run calls ``save`` and ``restore`` (orbax coordinates them).

``restore`` compares the stored tree structure and shapes with the state it is
asked to fill and raises a ``ValueError`` naming the directory and the fix on a
mismatch (another model / mask / optimiser config) or a corrupt checkpoint;
never a silent restart.

``load_run(workdir)`` reads a run folder (``config.json`` and the newest
checkpoint) without rebuilding its problem: the config and the trained
meta-parameters as plain arrays, for notebooks and exporters.
"""

import errno
import json
import logging
import os
import re
import sys
import warnings
from typing import NamedTuple

import flax.serialization
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from metaprune_jax.meta import step as meta_step


class CheckpointWriteError(OSError):
  """Writing a checkpoint failed (disk full, a file-size limit, I/O); the earlier checkpoints are untouched."""


class _OrbaxInfoFilter(logging.Filter):
  """Drops orbax's INFO / DEBUG records (~20 lines per save) and its worker threads' tracebacks (the same error
  reaches the caller as an exception); its other warnings and errors still show."""

  def filter(self, record: logging.LogRecord) -> bool:
    if f'{os.sep}orbax{os.sep}' not in record.pathname:
      return True
    return record.levelno >= logging.WARNING and not record.exc_info


def _quiet_closed_loop(unraisable) -> None:
  """Drops the 'Event loop is closed' errors of tensorstore callbacks that outlive a failed orbax save."""
  if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == 'Event loop is closed':
    return
  sys.__unraisablehook__(unraisable)


def quiet_orbax_logs() -> None:
  """Keeps the launcher's log to progress lines and its errors to one line.

  Filters orbax's INFO records and tracebacks from the ``absl`` logger, and the ~25 'Event loop is closed'
  tracebacks (``sys.unraisablehook``) and 'never awaited' warnings of a failed save. Idempotent; called by
  ``experiments.maml_prune`` (not on import, so a notebook keeps its own logging).
  """
  logger = logging.getLogger('absl')
  if not any(isinstance(f, _OrbaxInfoFilter) for f in logger.filters):
    logger.addFilter(_OrbaxInfoFilter())
  if sys.unraisablehook is not _quiet_closed_loop:
    sys.unraisablehook = _quiet_closed_loop
  # The writes a failed save abandoned, reported at exit after the launcher's error line.
  warnings.filterwarnings('ignore', message=r'coroutine .* was never awaited', category=RuntimeWarning)


def short_error(error: BaseException, limit: int = 300) -> str:
  """``'Type: message'`` of an orbax / tensorstore error without its tensorstore spec, at most about ``limit``
  chars (its start and its end, where tensorstore puts the cause)."""
  text = re.sub(r"\s*\[tensorstore_spec='.*'\]", '', str(error), flags=re.DOTALL)
  text = f'{type(error).__name__}: {text}'
  return text if len(text) <= limit else f'{text[:limit * 2 // 3]} ... {text[-(limit // 3):]}'


def _errno(error: BaseException) -> int | None:
  """The errno of an ``OSError``, or of a full disk or a file-size limit named in tensorstore's message."""
  if getattr(error, 'errno', None) is not None:
    return error.errno
  return next((code for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) if os.strerror(code) in str(error)), None)


def is_remote(path: str) -> bool:
  """Whether ``path`` is a URI (``gs://bucket/run``, ``s3://...``) rather than a local path."""
  return '://' in os.fspath(path)


def checkpoint_dir(workdir: str) -> str:
  """``workdir/checkpoints``: absolute for a local folder, a URI (``gs://...``) as it is."""
  folder = os.path.join(workdir, 'checkpoints')
  return folder if is_remote(folder) else os.path.abspath(folder)


def _manager(workdir: str, keep: int | None = None) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False,
                                         cleanup_tmp_directories=True)
  handlers = {'state': ocp.StandardCheckpointHandler(), 'host': ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(checkpoint_dir(workdir), item_handlers=handlers, options=options)


def _to_storable(state: meta_step.MetaState) -> dict:
  """A nested dict of arrays: the typed key as raw ``uint32`` key data (orbax stores plain arrays)."""
  return flax.serialization.to_state_dict(state._replace(key=jax.random.key_data(state.key)))


def _check_legacy(workdir: str) -> None:
  folder = epath.Path(checkpoint_dir(workdir))
  if folder.is_dir() and any(child.name.endswith('.msgpack') for child in folder.iterdir()):
    raise ValueError(f'{folder} holds msgpack checkpoints from an older version of this launcher; they cannot '
                     'be resumed by the orbax format. Pass a fresh --workdir (or delete that folder) to start over.')


def list_checkpoints(workdir: str) -> list[tuple[int, str]]:
  """``(step, path)`` of every complete checkpoint in ``workdir``, oldest first."""
  # Read-only (no manager: its start-up would delete another process's in-progress temporary directory).
  # Orbax gives a local step directory its final name only once every file is written; on gs:// it writes the
  # final name from the start and adds commit_success.txt last (is_path_finalized checks it).
  folder = epath.Path(checkpoint_dir(workdir))
  if not folder.is_dir():
    return []
  steps = sorted(int(child.name) for child in folder.iterdir() if child.name.isdigit() and child.is_dir()
                 and (not is_remote(workdir) or ocp.step.is_path_finalized(child)))
  return [(step, os.path.join(checkpoint_dir(workdir), str(step))) for step in steps]


def save(state: meta_step.MetaState, workdir: str, *, keep: int = 3, host: dict | None = None) -> str:
  """Writes ``state`` (and the JSON dict ``host``) atomically at ``state.step``; keeps the newest ``keep``.

  Raises:
    CheckpointWriteError: a write failed (orbax raises ``OSError`` or tensorstore's ``ValueError``); the message
      names the checkpoint. The partial directory is ignored and cleaned up by the next save.
  """
  step = int(state.step)
  path = os.path.join(checkpoint_dir(workdir), str(step))
  try:
    with _manager(workdir, keep) as manager:
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_to_storable(state)),
                                                 host=ocp.args.JsonSave(dict(host or {}))), force=True)
      manager.wait_until_finished()
  except Exception as e:  # pylint: disable=broad-except
    error = CheckpointWriteError(f'writing checkpoint {path} failed ({short_error(e)})')
    error.errno = _errno(e)
    raise error from e
  return path


def _check_compatible(expected: dict, stored, path: str, fix: str) -> None:
  want = jax.tree_util.tree_structure(expected)
  got = jax.tree_util.tree_structure(stored)
  if want != got:
    raise ValueError(f'Checkpoint {path} does not match this config (tree structure differs: it was '
                     f'written by a run with another model, mask or optimiser). {fix}')
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(stored)):
    if tuple(np.shape(a)) != tuple(b.shape):
      raise ValueError(f'Checkpoint {path} does not match this config (array of shape {tuple(b.shape)} '
                       f'where {tuple(np.shape(a))} is expected). {fix}')


def restore(template: meta_step.MetaState, workdir: str, step: int) -> tuple[meta_step.MetaState, dict]:
  """Fills ``template``'s structure (and shardings) with the arrays saved at ``step``; returns ``(state, host)``."""
  path = os.path.join(checkpoint_dir(workdir), str(step))
  fix = f'Delete {path} to resume from an earlier checkpoint, or pass a fresh --workdir to start over.'
  expected = _to_storable(template)
  with _manager(workdir) as manager:
    try:
      stored = manager.item_metadata(step)['state']
      stored_tree = stored.tree if hasattr(stored, 'tree') else stored
    except Exception as e:  # Orbax raises several unrelated types on a damaged directory.
      raise ValueError(f'Checkpoint {path} is corrupt or unreadable ({short_error(e)}). {fix}') from e
    if stored_tree is None:
      raise ValueError(f'Checkpoint {path} is corrupt or unreadable (no state metadata). {fix}')
    _check_compatible(expected, stored_tree, path, 'The checkpoint is intact: rerun with the config that wrote it, '
                      'or pass a fresh --workdir to start over.')
    try:
      restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(expected),
                                                               host=ocp.args.JsonRestore()))
    except Exception as e:
      raise ValueError(f'Checkpoint {path} is corrupt or unreadable ({short_error(e)}). {fix}') from e
  state = flax.serialization.from_state_dict(template._replace(key=jax.random.key_data(template.key)),
                                             restored['state'])
  return state._replace(key=jax.random.wrap_key_data(state.key)), dict(restored['host'] or {})


def restore_latest_with_host(template: meta_step.MetaState, workdir: str) -> tuple[meta_step.MetaState, dict] | None:
  """``(state, host)`` from the newest complete checkpoint in ``workdir``, or None when there is none."""
  _check_legacy(workdir)
  found = list_checkpoints(workdir)
  if not found:
    return None
  return restore(template, workdir, found[-1][0])


def restore_latest(template: meta_step.MetaState, workdir: str) -> meta_step.MetaState | None:
  """The newest checkpoint's state in ``workdir``, or None when there is none."""
  restored = restore_latest_with_host(template, workdir)
  return None if restored is None else restored[0]


class TrainedRun(NamedTuple):
  """A run folder's config and trained meta-parameters.

  Attributes:
    config: the run's resolved config (``workdir/config.json``).
    meta_params: ``{'params', 'gate_logits' (None when dense), *groups}`` as numpy arrays.
    step: the meta-step of the checkpoint read.
    multiplier: the Lagrange multiplier at that step.
  """
  config: ml_collections.ConfigDict
  meta_params: dict
  step: int
  multiplier: float


def load_run(workdir: str, step: int | None = None) -> TrainedRun:
  """The config and meta-parameters of the run in ``workdir`` (newest checkpoint, or ``step``).

  Raises:
    FileNotFoundError: ``workdir`` has no ``config.json`` or no checkpoint (the message names it).
    ValueError: the checkpoint is corrupt or unreadable, or holds several seeds (``--config.num_seeds``).
  """
  config_path = epath.Path(workdir) / 'config.json'
  if not config_path.exists():
    raise FileNotFoundError(f'{workdir!r} has no config.json: pass a folder written by python -m '
                            'experiments.maml_prune --workdir=DIR.')
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  if int(config.get('num_seeds', 1)) > 1:
    raise ValueError(f'{workdir!r} meta-trained {config.num_seeds} seeds stacked in one checkpoint '
                     "(--config.num_seeds); its summary.json holds each seed's evaluation (per_seed). Rerun one "
                     'seed alone (--config.seed=S --config.num_seeds=1) to load, evaluate or export it.')
  found = dict(list_checkpoints(workdir))
  if not found:
    raise FileNotFoundError(f'{workdir!r} has no checkpoint under checkpoints/: train it first (rerunning the '
                            'same command resumes).')
  step = max(found) if step is None else int(step)
  if step not in found:
    raise FileNotFoundError(f'{workdir!r} has no checkpoint at step {step}; it has steps {sorted(found)}.')
  with _manager(workdir) as manager:
    try:
      restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    except Exception as e:  # Orbax raises several unrelated types on a damaged directory.
      raise ValueError(f'Checkpoint {found[step]} is corrupt or unreadable ({short_error(e)}).') from e
  state = restored['state']
  meta_params = dict(state['meta_params'])
  meta_params.setdefault('gate_logits', None)  # A dense run stores no gate-logit arrays.
  return TrainedRun(config, meta_params, int(np.asarray(state['step'])), float(np.asarray(state['multiplier'])))
