"""Omniglot: the class-grouped dataset type and the image preprocessing every loader shares.

Loaders and splits live beside this module:

- ``omniglot_files``: the published zips / extracted folders, with an
  ``.npz`` cache (default; needs only numpy + Pillow, no network).
- ``omniglot_tfds``: tensorflow-datasets' ArrayRecord data source.
- ``omniglot_splits``: meta-train / validation / test split by character or
  alphabet, plus rotated copies of classes as extra classes.

Preprocessing (:func:`preprocess_image`, also used by
``data/episode_folders.py``): grey-scale, Lanczos resize to
``image_size x image_size`` (default 28), inverted so strokes are 1.0 and the
background 0.0 (Omniglot PNGs are black strokes on white), stored as uint8
(255 = stroke) and turned into float32 by :func:`to_float`.
"""

from typing import NamedTuple

import numpy as np
from PIL import Image

DATA_DIR_HELP = (
    'Set config.data_dir (flag --config.data_dir=/path/to/omniglot) to a folder'
    ' holding images_background_small1.zip and images_background_small2.zip'
    ' (and/or images_background.zip, images_evaluation.zip) from'
    ' https://github.com/brendenlake/omniglot/tree/master/python, or their'
    ' extracted images_*/<alphabet>/<character>/*.png folders; in this'
    ' project checkout they are in ../shared/data/omniglot. Or use the'
    ' tensorflow-datasets path: metaprune_jax.data.omniglot_tfds.load_from_tfds.')


class OmniglotDataset(NamedTuple):
  """Omniglot images grouped by class (a character, possibly rotated).

  Attributes:
    images: ``[classes, drawers, H, W, 1]``, float32 in [0, 1] or uint8 in
      [0, 255]; strokes high, background 0.
    alphabets: ``[classes]`` str, the alphabet folder of each class.
    characters: ``[classes]`` str, the character folder (``character01``...).
    rotations: ``[classes]`` int32, degrees the class was rotated (0, 90, ...).
  """
  images: np.ndarray
  alphabets: np.ndarray
  characters: np.ndarray
  rotations: np.ndarray


def preprocess_image(image: Image.Image, image_size: int) -> np.ndarray:
  """One image -> ``[image_size, image_size, 1]`` uint8, 255 = stroke.

  Transparent pixels count as white paper; the input must show dark strokes on
  a light background, like the Omniglot PNGs.
  """
  if image.mode in ('RGBA', 'LA', 'PA') or 'transparency' in image.info:
    rgba = image.convert('RGBA')
    paper = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(paper, rgba)
  grey = image.convert('L').resize((image_size, image_size), Image.LANCZOS)
  return (255 - np.asarray(grey, dtype=np.uint8))[..., None]


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 images (255 = stroke) -> float32 in [0, 1] (1.0 = stroke)."""
  return np.asarray(images, dtype=np.float32) / np.float32(255.0)


def check_image_size(image_size) -> None:
  """Raises ``ValueError`` unless ``image_size`` is a positive int (not a bool)."""
  if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
    raise ValueError(f'image_size must be a positive int (pixels per side), got {image_size!r}.')


def make_dataset(images: np.ndarray, alphabets, characters, dtype: str) -> OmniglotDataset:
  """Wraps decoded images as an unrotated ``OmniglotDataset``.

  Args:
    images: ``[classes, drawers, S, S, 1]`` uint8, 255 = stroke.
    alphabets: ``[classes]`` alphabet names.
    characters: ``[classes]`` character folder names.
    dtype: ``'float32'`` (images via :func:`to_float`) or ``'uint8'`` (as is).

  Returns:
    ``OmniglotDataset`` with all rotations 0.
  """
  if dtype not in ('float32', 'uint8'):
    raise ValueError(f"dtype must be 'float32' or 'uint8', got {dtype!r}.")
  return OmniglotDataset(
      images=to_float(images) if dtype == 'float32' else images,
      alphabets=np.asarray(alphabets, dtype=str),
      characters=np.asarray(characters, dtype=str),
      rotations=np.zeros(len(alphabets), np.int32))
