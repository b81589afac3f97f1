"""Host side of a run's health: the non-finite guard and TensorBoard event files.

``NonfiniteGuard`` keeps each meta-step's ``outer/nonfinite`` flag as a device
scalar (no host sync per step) and reads them all in one transfer when a log
line or a checkpoint is due, so every step is checked and a bad state is never
checkpointed. ``EventWriter`` mirrors the JSON-lines metrics into TensorBoard
event files when ``tensorboardX`` is installed (it is pinned in
requirements.txt; without it the writer is a no-op and says so once). Only
process 0 of a multi-host run writes events. A remote ``logdir`` works where
tensorboardX writes to it itself (``gs://`` with ``google-cloud-storage``,
``s3://`` with ``boto3``); elsewhere the writer is a no-op and says why.
"""

import math
import struct

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from metaprune_jax import checkpoint

NONFINITE_FIX = ('Lower --config.outer.outer_lr or --config.inner.inner_lr, set --config.outer.grad_clip_norm, '
                 'or pass --config.run.nonfinite=skip to drop non-finite updates and count them.')
# The skip fraction is checked from this meta-step on, so that one early skip does not stop a run.
MIN_STEPS_FOR_FRACTION = 20


class NonfiniteGuard:
  """Collects per-step non-finite flags; ``check`` raises (mode 'stop') or counts them (mode 'skip').

  Attributes:
    mode: 'stop' or 'skip'.
    skipped_steps: number of updates dropped so far (restored from the checkpoint on resume).
    max_skipped: mode 'skip' raises once more than this many updates were dropped (None: no limit).
    max_skipped_fraction: mode 'skip' raises once more than this fraction of the meta-steps so far were dropped,
      from meta-step ``MIN_STEPS_FOR_FRACTION`` on (None or 1: no limit).
  """

  def __init__(self, mode: str, skipped_steps: int = 0, max_skipped: int | None = None,
               max_skipped_fraction: float | None = None):
    self.mode = mode
    self.skipped_steps = int(skipped_steps)
    self.max_skipped = max_skipped
    self.max_skipped_fraction = max_skipped_fraction
    self._flags: list[jax.Array] = []
    self._first_step: int | None = None

  def record(self, step: int, metrics: dict) -> None:
    """Keeps the flag of step ``step`` (a device scalar), or of steps ``step, step + 1, ...`` (a ``[K]``
    vector from a K-steps-per-call step); nothing is transferred. Calls must come in step order."""
    if not self._flags:
      self._first_step = step
    self._flags.append(metrics['outer/nonfinite'])

  def check(self, last_checkpoint: str | None) -> None:
    """Reads every flag recorded since the last check in one transfer."""
    if not self._flags:
      return
    if len({f.shape for f in self._flags}) == 1:  # One transfer.
      flags = np.ravel(jax.device_get(jnp.stack(self._flags)))
    else:
      flags = np.concatenate([np.ravel(f) for f in jax.device_get(self._flags)])
    first, self._flags = self._first_step, []
    bad = np.flatnonzero(flags > 0)
    if not bad.size:
      return
    where = (f'the last good checkpoint is {last_checkpoint}' if last_checkpoint else 'no checkpoint was written yet')
    if self.mode == 'skip':
      self.skipped_steps += int(bad.size)
      logging.warning('Skipped %d non-finite update(s) at step(s) %s (%d so far).', bad.size,
                      [first + int(i) for i in bad[:10]], self.skipped_steps)
      self._check_limits(first + len(flags) - 1, where)
      return
    raise FloatingPointError(f'Non-finite loss or gradients at meta-step {first + int(bad[0])}; {where} (rerun with '
                             f'the same --workdir to resume from it). {NONFINITE_FIX}')

  def _check_limits(self, step: int, where: str) -> None:
    """Raises once the skipped updates by meta-step ``step`` pass the count or the fraction limit."""
    if self.max_skipped is not None and self.skipped_steps > self.max_skipped:
      limit = f'more than --config.run.max_skipped_steps={self.max_skipped}'
    elif (self.max_skipped_fraction is not None and step >= MIN_STEPS_FOR_FRACTION
          and self.skipped_steps > self.max_skipped_fraction * step):
      limit = (f'{self.skipped_steps / step:.0%} of the {step} so far, more than '
               f'--config.run.max_skipped_fraction={self.max_skipped_fraction:g}')
    else:
      return
    raise FloatingPointError(
        f'{self.skipped_steps} non-finite updates skipped by meta-step {step}, {limit}: the run is diverging; '
        f'{where} (no summary was written). {NONFINITE_FIX.split(", or pass")[0]}.')


class EventWriter:
  """Scalars to TensorBoard event files in ``logdir`` (no-op when tensorboardX is missing or disabled)."""

  def __init__(self, logdir: str, enabled: bool = True, purge_step: int | None = None):
    self._writer = None
    if not enabled or jax.process_index() != 0:
      return
    try:
      import tensorboardX  # pylint: disable=g-import-not-at-top
    except ImportError:
      logging.warning('tensorboardX is not installed: no TensorBoard events (metrics.jsonl has everything). '
                      '`pip install -r requirements.txt` adds it.')
      return
    from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
    scheme = logdir.split('://')[0] if checkpoint.is_remote(logdir) else None
    if scheme is not None and scheme not in record_writer.REGISTERED_FACTORIES:
      logging.warning('No TensorBoard events: tensorboardX cannot write to %s:// (metrics.jsonl has everything).',
                      scheme)
      return
    try:
      # purge_step: on resume, TensorBoard drops events at or after the checkpoint step written by the killed run.
      self._writer = tensorboardX.SummaryWriter(logdir, purge_step=purge_step)
    except ImportError as e:  # A remote logdir's client library (google-cloud-storage, boto3) is missing.
      logging.warning('No TensorBoard events in %s (%s); metrics.jsonl has everything.', logdir, e)

  @property
  def active(self) -> bool:
    return self._writer is not None

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if self._writer is None:
      return
    for name, value in scalars.items():
      self._writer.add_scalar(name, value, step)
    self._writer.flush()

  def write_hparams(self, hparams: dict, scores: dict[str, float], step: int) -> None:
    """The run's hyperparameters and final scores for TensorBoard's HPARAMS tab (in ``logdir/hparams``)."""
    if self._writer is None:
      return
    self._writer.add_hparams(hparams, scores, name='hparams', global_step=step)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def hparams(config) -> dict[str, bool | int | float | str]:
  """The config's leaves under their dotted paths, as TensorBoard takes them (sequences as strings)."""
  flat = {}
  def walk(node, prefix):
    for name, value in node.items():
      path = f'{prefix}{name}'
      if hasattr(value, 'items'):
        walk(value, f'{path}.')
      elif isinstance(value, (bool, int, float, str)):
        flat[path] = value
      else:
        flat[path] = str(value)
  walk(config, '')
  return flat


def final_scores(summary: dict) -> dict[str, float]:
  """``{'final/<model>/<shots>/<step>': mean}`` of a summary's evaluation, plus the realised sparsity."""
  scores = {'final/realised_sparsity': float(summary['sparsity']['realised_sparsity'])}
  for model, by_shots in summary['eval'].items():
    for shots, by_step in by_shots.items():
      for step, stats in by_step.items():
        if math.isfinite(stats['mean']):
          scores[f'final/{model}/{shots}/{step}'] = float(stats['mean'])
  return scores


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """``{tag: [(step, value), ...]}`` from every event file in ``logdir`` (TFRecord framing, no TensorFlow)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(epath.Path(logdir).glob('events.out.tfevents.*'), key=str):
    data = path.read_bytes()
    offset = 0
    while offset + 12 <= len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      record = data[offset + 12:offset + 12 + length]
      offset += 12 + length + 4
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
  return scalars
