"""Atomic, self-describing checkpoints of a ``MetaState`` (msgpack via flax.serialization).

A checkpoint is written to a temporary file and renamed into place, so a run
killed mid-write leaves the previous checkpoint intact. ``restore`` checks the
tree structure and shapes against the state it is asked to fill and raises a
``ValueError`` that names the file and the fix on any mismatch or corruption.
"""

import os
import re

import flax.serialization
import jax
import numpy as np

from metaprune_jax.meta import step as meta_step

_PATTERN = re.compile(r'^ckpt_(\d+)\.msgpack$')


def _to_storable(state: meta_step.MetaState) -> dict:
  state = state._replace(key=jax.random.key_data(state.key))
  return flax.serialization.to_state_dict(jax.device_get(state))


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, 'checkpoints')


def list_checkpoints(workdir: str) -> list[tuple[int, str]]:
  """``(step, path)`` of every complete checkpoint in ``workdir``, oldest first."""
  folder = checkpoint_dir(workdir)
  if not os.path.isdir(folder):
    return []
  found = []
  for name in os.listdir(folder):
    match = _PATTERN.match(name)
    if match:
      found.append((int(match.group(1)), os.path.join(folder, name)))
  return sorted(found)


def save(state: meta_step.MetaState, workdir: str, *, keep: int = 3) -> str:
  """Writes ``state`` atomically as ``checkpoints/ckpt_<step>.msgpack``; keeps the newest ``keep``."""
  folder = checkpoint_dir(workdir)
  os.makedirs(folder, exist_ok=True)
  step = int(state.step)
  path = os.path.join(folder, f'ckpt_{step}.msgpack')
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(_to_storable(state)))
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  for _, old in list_checkpoints(workdir)[:-keep]:
    os.remove(old)
  return path


def restore(template: meta_step.MetaState, path: str) -> meta_step.MetaState:
  """Fills ``template``'s structure with the arrays stored at ``path``."""
  fix = (f'Delete {path} to resume from an earlier checkpoint, or pass a fresh --workdir to start over.')
  try:
    with open(path, 'rb') as f:
      stored = flax.serialization.msgpack_restore(f.read())
  except Exception as e:  # msgpack raises several unrelated types on garbage.
    raise ValueError(f'Checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e}). {fix}') from e
  expected = _to_storable(template)
  want = jax.tree_util.tree_structure(expected)
  got = jax.tree_util.tree_structure(stored)
  if want != got:
    raise ValueError(f'Checkpoint {path} does not match this config (tree structure differs: it was '
                     f'written by a run with another model, mask or optimiser). {fix}')
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(stored)):
    if np.shape(a) != np.shape(b):
      raise ValueError(f'Checkpoint {path} does not match this config (array of shape {np.shape(b)} '
                       f'where {np.shape(a)} is expected). {fix}')
  restored = flax.serialization.from_state_dict(jax.device_get(template._replace(
      key=jax.random.key_data(template.key))), stored)
  restored = jax.tree.map(jax.numpy.asarray, restored)
  return restored._replace(key=jax.random.wrap_key_data(restored.key))


def restore_latest(template: meta_step.MetaState, workdir: str) -> meta_step.MetaState | None:
  """The newest checkpoint in ``workdir``, or None when there is none."""
  found = list_checkpoints(workdir)
  if not found:
    return None
  return restore(template, found[-1][1])
