"""Run safety of a workdir: one writer (a lock), atomic writes, a config-checked resume, crash-tolerant metrics.

``lock(workdir)`` holds ``workdir/.lock`` (``fcntl.flock``, released by the
kernel when the process ends, so a killed run's lock never blocks a rerun) for
the life of a run; a second launcher fails at once naming the first's process
and host. ``check_resume(config, workdir)`` compares a checkpointed run's
``config.json`` with the new config and refuses any change that would alter the
numbers unless ``run.allow_changes`` lists it. ``write_atomic`` writes a file as
a temporary file renamed into place, so a reader never sees half of it;
``write_atomic`` and ``append_line`` raise a ``WriteError`` naming the file when
a write fails (disk full, a file-size limit). ``truncate_metrics`` drops log
lines after the checkpoint a run resumes from, and unreadable (torn) lines with
a warning.
"""

import contextlib
import fcntl
import json
import os
import socket
import time

import ml_collections
from absl import logging

from experiments import config_check
from metaprune_jax import checkpoint

# Fields that never change a run's numbers: a resume may change them freely.
ALWAYS_ALLOWED = ('run.log_every_steps', 'run.checkpoint_every_steps', 'run.keep_checkpoints', 'run.tensorboard',
                  'run.allow_changes', 'run.max_skipped_steps', 'run.max_skipped_fraction')


class WorkdirInUseError(ValueError):
  """Another live process holds the workdir's lock."""


class ResumeMismatchError(ValueError):
  """The workdir's checkpointed run has another config."""


class WriteError(OSError):
  """A write into a run folder failed (disk full, a file-size limit, I/O); the message names the file."""


def write_error(path: str, error: OSError) -> OSError:
  """``error`` as a ``WriteError`` naming ``path``; a missing folder or a permission (the user's to fix) as is."""
  if isinstance(error, (WriteError, FileNotFoundError, PermissionError)):
    return error
  wrapped = WriteError(f'writing {path} failed ({error.strerror or error})')
  wrapped.errno = error.errno
  return wrapped


@contextlib.contextmanager
def lock(workdir: str):
  """Holds ``workdir/.lock`` exclusively while the block runs (creates ``workdir``).

  Raises:
    WorkdirInUseError: another live process holds it (the message names its pid and host).
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, '.lock')
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = ''
    for _ in range(20):  # The holder writes its pid just after taking the lock.
      holder = os.pread(fd, 256, 0).decode(errors='replace').split()
      if holder:
        break
      time.sleep(0.05)
    os.close(fd)
    pid, host = (holder + ['?', '?'])[:2]
    raise WorkdirInUseError(f'workdir {workdir} is in use by process {pid} on {host} (one run per workdir): wait '
                            'for it to finish or stop it, or pass another --workdir.') from None
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'{os.getpid()} {socket.gethostname()}\n'.encode(), 0)
    yield path
  finally:
    os.close(fd)  # Releases the lock; the file stays (removing it would race with a waiting launcher).


def write_atomic(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` through a temporary file renamed into place (old or new, never half).

  Raises:
    WriteError: the write failed (``path`` is untouched; the message names it).
  """
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    if isinstance(e, OSError) and write_error(path, e) is not e:
      raise write_error(path, e) from e
    raise


def append_line(file, path: str, line: str) -> None:
  """Appends ``line`` to ``file`` (opened ``'ab', buffering=0``): nothing stays buffered, so a failed write raises
  here, once, and closing the file cannot raise again.

  Raises:
    WriteError: naming ``path`` (a partial line may remain: ``truncate_metrics`` drops it on resume).
  """
  data = line.encode()
  try:
    while data:
      data = data[file.write(data):]
  except OSError as e:
    if write_error(path, e) is e:
      raise
    raise write_error(path, e) from e


def config_text(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes ``workdir/config.json`` and logs the config (once a run is set up: a user mistake found before stays
  the last line the launcher prints)."""
  path = os.path.join(workdir, 'config.json')
  write_atomic(path, config_text(config))
  logging.info('Config (%s):\n%s', path, config)


def _leaves(text: str) -> dict:
  return config_check.leaf_paths(ml_collections.ConfigDict(json.loads(text)))


def config_changes(stored_text: str, config: ml_collections.ConfigDict) -> dict[str, tuple]:
  """``{path: (stored, new)}`` of every leaf that differs (absent leaves as ``'<absent>'``).

  A field the stored config lacks (the run was saved before it existed) counts as its default, as
  ``config_check.fill_missing`` loads it: setting it to that default is no change.
  """
  stored = ml_collections.ConfigDict(json.loads(stored_text))
  config_check.fill_missing(stored)
  old, new = _leaves(config_text(stored)), _leaves(config_text(config))
  return {p: (old.get(p, '<absent>'), new.get(p, '<absent>')) for p in sorted(set(old) | set(new))
          if old.get(p, '<absent>') != new.get(p, '<absent>')}


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a checkpointed run in ``workdir`` with a config that would change its numbers.

  Nothing is written. A workdir without a checkpoint starts over and is not checked.

  Raises:
    ResumeMismatchError: naming every changed field not in ``ALWAYS_ALLOWED`` or ``run.allow_changes``, or a
      checkpoint past ``outer.num_outer_steps``.
  """
  found = checkpoint.list_checkpoints(workdir)
  if not found:
    return
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    logging.warning('%s has checkpoints but no config.json: resuming without comparing configs.', workdir)
  else:
    with open(path) as f:
      stored = f.read()
    allowed = set(ALWAYS_ALLOWED) | set(config.run.allow_changes)
    changes = {p: v for p, v in config_changes(stored, config).items() if p not in allowed}
    if changes:
      listed = '; '.join(f'{p}: {old!r} -> {new!r}' for p, (old, new) in changes.items())
      fields = ','.join(f"'{p}'" for p in changes)
      raise ResumeMismatchError(
          f'workdir {workdir} holds a run checkpointed at step {found[-1][0]} with another config ({listed}); '
          f'resuming would mix two runs. Rerun with its config ({path}), pass a fresh --workdir, or, if the change '
          f'is intended, pass --config.run.allow_changes="({fields},)". Nothing was changed.')
  last, num_steps = found[-1][0], int(config.outer.num_outer_steps)
  if last > num_steps:
    raise ResumeMismatchError(
        f'workdir {workdir} has a checkpoint at step {last}, past --config.outer.num_outer_steps={num_steps}: '
        f'pass --config.outer.num_outer_steps >= {last} or a fresh --workdir. Nothing was changed.')


def truncate_metrics(path: str, last_step: int) -> None:
  """Keeps the log lines up to ``last_step`` (the checkpoint resumed from); drops unreadable (torn) lines with
  a warning. Rewritten atomically."""
  if not os.path.exists(path):
    return
  kept, torn = [], []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        torn.append(number)
        continue
      if record['step'] <= last_step:
        kept.append(line if line.endswith('\n') else line + '\n')
  if torn:
    logging.warning('%s: dropped %d unreadable line(s) (line %s; a write cut short, e.g. by a full disk).', path,
                    len(torn), ', '.join(map(str, torn)))
  write_atomic(path, ''.join(kept))


def output_path(workdir: str, output: str | None, name: str) -> str:
  """Where a tool's result on a run goes, decided before any work: ``output``, else ``workdir/name`` when the run
  folder is writable (or missing: loading it fails first), else ``./name``.

  Raises:
    PermissionError: ``output``'s folder is missing or not writable.
  """
  if output:
    folder = os.path.dirname(os.path.abspath(output))
    if not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
      raise PermissionError(f'--output={output}: the folder {folder} is missing or not writable.')
    return output
  if not os.path.isdir(workdir) or os.access(workdir, os.W_OK):  # A missing run fails in build.load.
    return os.path.join(workdir, name)
  return os.path.abspath(name)
