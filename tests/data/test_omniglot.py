"""Tests for metaprune_jax.data.omniglot: image preprocessing."""

import numpy as np
from PIL import Image

from metaprune_jax.data import omniglot
from tests import test_utils


def test_preprocess_image_inverts_and_resizes():
  image = Image.new('L', (105, 105), 255)
  image.paste(0, (30, 30, 75, 75))  # Black square on white paper.
  out = omniglot.preprocess_image(image, 21)
  assert out.shape == (21, 21, 1) and out.dtype == np.uint8
  assert out[10, 10, 0] == 255 and out[0, 0, 0] == 0
  rgba = Image.new('RGBA', (40, 40), (0, 0, 0, 0))  # Transparent counts as paper.
  rgba.paste((0, 0, 0, 255), (10, 10, 30, 30))
  test_utils.assert_equal(omniglot.preprocess_image(rgba, 8)[[0, 4], [0, 4], 0], [0, 255])
  test_utils.assert_close(omniglot.to_float(out)[10, 10, 0], 1.0)
