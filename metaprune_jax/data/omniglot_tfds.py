"""Omniglot through tensorflow-datasets (tfds 4.9) without TensorFlow at read time.

``tfds.load`` / ``tfds.as_numpy`` read through ``tf.data`` and so need
TensorFlow. ``tfds.data_source`` / ``builder.as_data_source`` read ArrayRecord
files with NumPy only (``pip install tensorflow-datasets array_record``; images
are decoded with OpenCV, else Pillow), but the files must first be written by
``download_and_prepare`` with ``file_format='array_record'``, and that step
still needs TensorFlow (the ``omniglot`` builder lists files with
``tf.io.gfile``) plus network access. So: prepare once on a machine with
TensorFlow (``load_from_tfds(..., download=True)``), copy the tfds
``data_dir``, then read it anywhere without TensorFlow. Splits: ``train``
(background, 964 characters), ``test`` (evaluation, 659), ``small1``,
``small2``; images are ``(105, 105, 3)`` uint8 PNGs, preprocessed by
``omniglot.preprocess_image``.
"""

from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from metaprune_jax.data import omniglot


def load_from_tfds(
    split: Union[str, Sequence[str]],
    data_dir: Optional[str] = None,
    image_size: int = 28,
    *,
    dtype: str = 'float32',
    download: bool = False,
) -> omniglot.OmniglotDataset:
  """Loads Omniglot through tensorflow-datasets' ArrayRecord data source.

  Reading needs ``tensorflow-datasets>=4.9`` and ``array_record`` but not
  TensorFlow; ``download=True`` (``download_and_prepare``) needs TensorFlow
  and network access (see the module docstring). Drawer order within a class
  follows the record order, not the file names.

  Args:
    split: tfds split name(s): ``'train'``, ``'test'``, ``'small1'``,
      ``'small2'``; several are merged with duplicates dropped.
    data_dir: tfds data folder (None: tfds default, ``~/tensorflow_datasets``).
    image_size: side of the square output images.
    dtype: ``'float32'`` or ``'uint8'``.
    download: run ``download_and_prepare`` first (off by default).

  Returns:
    ``OmniglotDataset`` as from ``omniglot_files.load_omniglot``.
  """
  omniglot.check_image_size(image_size)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        'load_from_tfds needs tensorflow-datasets>=4.9 and array_record'
        ' (pip install tensorflow-datasets array_record); preparing the data'
        ' (download=True) also needs tensorflow. The default path needs neither:'
        f' omniglot_files.load_omniglot(data_dir). {omniglot.DATA_DIR_HELP}') from e
  builder = tfds.builder('omniglot', data_dir=data_dir, file_format='array_record')
  if download:
    builder.download_and_prepare()
  features = builder.info.features
  alphabet_names = features['alphabet'].names
  groups = {}
  for name in ([split] if isinstance(split, str) else list(split)):
    try:
      source = builder.as_data_source(split=name)
    except Exception as e:  # pylint: disable=broad-except
      raise FileNotFoundError(
          f'tfds omniglot split {name!r} is not prepared as array_record in data_dir'
          f' {data_dir!r} ({e}). Run load_from_tfds(..., download=True) once on a machine'
          f' with tensorflow, or use omniglot_files.load_omniglot. {omniglot.DATA_DIR_HELP}') from e
    seen_here = set()
    for index in range(len(source)):
      example = source[index]
      key = (alphabet_names[int(example['alphabet'])], f"character{int(example['alphabet_char_id']) + 1:02d}")
      if key in groups and key not in seen_here:
        continue  # Already read from an earlier split.
      seen_here.add(key)
      pixels = omniglot.preprocess_image(Image.fromarray(np.asarray(example['image'], np.uint8)), image_size)
      groups.setdefault(key, []).append(pixels)
  keys = sorted(groups)
  counts = {len(groups[k]) for k in keys}
  if len(counts) != 1:
    raise ValueError(f'tfds omniglot split {split!r}: uneven drawers per character {sorted(counts)}.')
  images = np.stack([np.stack(groups[k]) for k in keys])
  return omniglot.make_dataset(images, [k[0] for k in keys], [k[1] for k in keys], dtype)
