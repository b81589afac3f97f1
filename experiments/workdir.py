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

A workdir may be a local folder or a URI (``gs://bucket/run``): every read and
write goes through ``etils.epath``. What holds where:

- local: as above (``fcntl`` lock; temporary file, ``fsync``, ``os.replace``;
  ``metrics.jsonl`` appended line by line).
- remote (an object store): no lock (``fcntl`` locks only local files; ``lock``
  says so in a warning, keeping one launcher per workdir is the user's);
  ``write_atomic`` uploads the file in one request, which an object store
  publishes whole or not at all (a rename there is a copy and a delete, so no
  temporary file); ``metrics.jsonl`` is uploaded whole at every line (objects
  cannot be appended to).
"""

import contextlib
import fcntl
import io
import json
import os
import socket
import time

import ml_collections
from absl import logging
from etils import epath

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


def absolute(path: str) -> str:
  """``path`` made absolute when local; a URI (``gs://...``) as it is."""
  return path if checkpoint.is_remote(path) else os.path.abspath(path)


def check_reachable(workdir: str) -> None:
  """Raises a ``ValueError`` naming the fix when ``workdir``'s filesystem cannot be used (e.g. ``gs://`` without
  ``gcsfs``, which ``etils.epath`` reads it with); nothing is written."""
  try:
    epath.Path(workdir).exists()
  except ImportError as e:
    raise ValueError(f'workdir {workdir} cannot be reached ({e}); etils.epath reads gs://, s3:// and az:// '
                     'through fsspec (pip install gcsfs, s3fs or adlfs) or tensorflow.') from None


@contextlib.contextmanager
def lock(workdir: str):
  """Holds ``workdir/.lock`` exclusively while the block runs (creates ``workdir``).

  A remote workdir (``gs://...``) is created but not locked (``fcntl`` locks only local files): a warning says so.

  Raises:
    WorkdirInUseError: another live process holds it (the message names its pid and host).
  """
  if checkpoint.is_remote(workdir):
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    logging.warning('workdir %s is remote: it is not locked (file locks work on local folders only); run one '
                    'launcher per workdir.', workdir)
    yield None
    return
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

  A remote ``path`` (``gs://...``) is uploaded in one request, which the object store publishes whole or not at
  all (the module docstring).

  Raises:
    WriteError: the write failed (``path`` is untouched; the message names it).
  """
  if checkpoint.is_remote(path):
    try:
      epath.Path(path).write_text(text)
    except OSError as e:
      if write_error(path, e) is e:
        raise
      raise write_error(path, e) from e
    return
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


def append_text(path: str, text: str) -> None:
  """Appends ``text`` to the file ``path`` (created if missing); a remote one (objects cannot be appended to) is
  read and uploaded whole."""
  if checkpoint.is_remote(path):
    target = epath.Path(path)
    write_atomic(path, (target.read_text() if target.exists() else '') + text)
    return
  with open(path, 'a') as f:
    f.write(text)


@contextlib.contextmanager
def metrics_log(path: str, *, enabled: bool = True):
  """Yields ``append(line)``, which adds ``line`` to ``metrics.jsonl`` at ``path`` as it is written.

  Local: the file opened ``'ab'`` unbuffered (``append_line``). Remote (``gs://...``): the lines already there and
  every new one, uploaded whole at each ``append`` (objects cannot be appended to). ``enabled=False`` (processes
  other than 0 of a multi-host run): nothing is written.
  """
  if not enabled:
    yield lambda line: None
  elif checkpoint.is_remote(path):
    target = epath.Path(path)
    lines = [target.read_text()] if target.exists() else []

    def append(line: str) -> None:
      lines.append(line)
      write_atomic(path, ''.join(lines))
    yield append
  else:
    with open(path, 'ab', buffering=0) as file:  # Unbuffered: a failed write (disk full) raises here, naming it.
      yield lambda line: append_line(file, path, line)


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
  if not epath.Path(path).exists():
    logging.warning('%s has checkpoints but no config.json: resuming without comparing configs.', workdir)
  else:
    stored = epath.Path(path).read_text()
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
  if not epath.Path(path).exists():
    return
  kept, torn = [], []
  for number, line in enumerate(io.StringIO(epath.Path(path).read_text()), 1):
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

  A remote ``output`` or ``workdir`` (``gs://...``) is taken as writable.

  Raises:
    PermissionError: ``output``'s folder is missing or not writable.
  """
  if output and checkpoint.is_remote(output):
    return output
  if output:
    folder = os.path.dirname(os.path.abspath(output))
    if not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
      raise PermissionError(f'--output={output}: the folder {folder} is missing or not writable.')
    return output
  if checkpoint.is_remote(workdir) or not os.path.isdir(workdir) or os.access(workdir, os.W_OK):
    return os.path.join(workdir, name)  # A missing run fails in build.load.
  return os.path.abspath(name)
