"""User few-shot episodes stored as image folders.

Layout (any number of classes, any image size, any number of images per
class; class folder names are the class names)::

  DIR/<episode>/support/<class>/*.png
  DIR/<episode>/query/<class>/*.png

``DIR`` may also be a single episode (holding ``support/`` and ``query/``).
Query classes must also appear in support. Images are preprocessed exactly
like the training data (``data.omniglot.preprocess_image`` then
``to_float``): grey-scale, resized to ``image_size``, inverted so dark strokes
on light paper become 1.0 on 0.0. Labels are the indices of the sorted class
names. Hidden files (``.*``) are skipped.
"""

import os
from typing import NamedTuple

import numpy as np
from PIL import Image

from metaprune_jax.data.omniglot import preprocess_image
from metaprune_jax.data.omniglot import to_float
from metaprune_jax.types import TaskBatch

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif')
_LAYOUT = 'expected DIR/<episode>/support/<class>/*.png and DIR/<episode>/query/<class>/*.png'


class Episode(NamedTuple):
  """One user episode.

  Attributes:
    name: the episode folder name.
    support_inputs: ``[support, image_size, image_size, 1]`` float32.
    support_targets: ``[support]`` int32 in ``0..len(class_names)-1``.
    query_inputs: ``[query, image_size, image_size, 1]`` float32.
    query_targets: ``[query]`` int32.
    class_names: label ``i`` is ``class_names[i]`` (sorted folder names).
    support_files: ``[support]`` source paths, aligned with the inputs.
    query_files: ``[query]`` source paths.
  """
  name: str
  support_inputs: np.ndarray
  support_targets: np.ndarray
  query_inputs: np.ndarray
  query_targets: np.ndarray
  class_names: tuple
  support_files: tuple
  query_files: tuple


def _visible(folder):
  return sorted(e for e in os.listdir(folder) if not e.startswith('.'))


def _read_side(side_dir: str, image_size: int) -> dict:
  """``support/`` or ``query/`` -> {class name: (files, [n, S, S, 1] float32)}."""
  if not os.path.isdir(side_dir):
    raise ValueError(f'Missing folder {side_dir}; {_LAYOUT}.')
  loose = [e for e in _visible(side_dir) if not os.path.isdir(os.path.join(side_dir, e))]
  if loose:
    raise ValueError(f'{side_dir} holds files {loose[:3]} outside class folders; {_LAYOUT}.')
  classes = {}
  for name in _visible(side_dir):
    class_dir = os.path.join(side_dir, name)
    files = [os.path.join(class_dir, e) for e in _visible(class_dir)]
    bad = [f for f in files if not f.lower().endswith(IMAGE_SUFFIXES) or os.path.isdir(f)]
    if bad:
      raise ValueError(f'{bad[0]} is not an image file ({", ".join(IMAGE_SUFFIXES)}); {_LAYOUT}.')
    if not files:
      raise ValueError(f'Class folder {class_dir} has no images.')
    pixels = []
    for path in files:
      try:
        with Image.open(path) as image:
          pixels.append(preprocess_image(image, image_size))
      except (OSError, ValueError) as e:
        raise ValueError(f'Cannot read image {path} ({e}).') from e
    classes[name] = (files, to_float(np.stack(pixels)))
  if not classes:
    raise ValueError(f'{side_dir} has no class folders; {_LAYOUT}.')
  return classes


def _flatten(classes: dict, class_names: tuple, image_size: int):
  label_of = {name: i for i, name in enumerate(class_names)}
  files, inputs, targets = [], [], []
  for name, (paths, pixels) in classes.items():
    files += paths
    inputs.append(pixels)
    targets += [label_of[name]] * len(paths)
  if not inputs:
    return (), np.zeros((0, image_size, image_size, 1), np.float32), np.zeros((0,), np.int32)
  return tuple(files), np.concatenate(inputs), np.asarray(targets, np.int32)


def load_episode(episode_dir: str, *, image_size: int = 28) -> Episode:
  """Reads one ``<episode>/{support,query}/<class>/*`` folder (see module docstring)."""
  if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
    raise ValueError(f'image_size must be a positive int, got {image_size!r}.')
  if not os.path.isdir(episode_dir):
    raise FileNotFoundError(f'Episode folder {episode_dir} does not exist; {_LAYOUT}.')
  support = _read_side(os.path.join(episode_dir, 'support'), image_size)
  query = _read_side(os.path.join(episode_dir, 'query'), image_size)
  unknown = sorted(set(query) - set(support))
  if unknown:
    raise ValueError(
        f'{episode_dir}: query classes {unknown} have no support folder; every query class'
        f' needs support/<class>/ images (support classes: {sorted(support)}).')
  class_names = tuple(sorted(support))
  support_files, support_inputs, support_targets = _flatten(support, class_names, image_size)
  query_files, query_inputs, query_targets = _flatten(query, class_names, image_size)
  return Episode(
      name=os.path.basename(os.path.normpath(episode_dir)),
      support_inputs=support_inputs, support_targets=support_targets,
      query_inputs=query_inputs, query_targets=query_targets,
      class_names=class_names, support_files=support_files, query_files=query_files)


def load_episode_folders(root_dir: str, *, image_size: int = 28) -> list[Episode]:
  """Reads every episode under ``root_dir`` (sorted by name), or ``root_dir`` itself
  when it directly holds ``support/`` and ``query/``."""
  if not os.path.isdir(root_dir):
    raise FileNotFoundError(f'Episode folder {root_dir} does not exist; {_LAYOUT}.')
  entries = _visible(root_dir)
  if 'support' in entries and 'query' in entries:
    return [load_episode(root_dir, image_size=image_size)]
  episodes = [e for e in entries if os.path.isdir(os.path.join(root_dir, e))]
  if not episodes:
    raise ValueError(f'{root_dir} holds no episode folders; {_LAYOUT}.')
  return [load_episode(os.path.join(root_dir, e), image_size=image_size) for e in episodes]


def as_task_batch(episode: Episode) -> TaskBatch:
  """One episode -> ``TaskBatch`` with a leading ``[1, ...]`` tasks axis."""
  return TaskBatch(
      support_inputs=episode.support_inputs[None], support_targets=episode.support_targets[None],
      query_inputs=episode.query_inputs[None], query_targets=episode.query_targets[None])
