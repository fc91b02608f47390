"""PNG grids of samples and reconstructions (no plotting library needed)."""

import math
import os

import numpy as np
from PIL import Image

__all__ = ["save_grid", "image_grid"]


def image_grid(images, num_cols=None, pad=1):
  """Tiles ``[N, H, W, C]`` images in [0, 1] into one uint8 array."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  num, height, width, channels = images.shape
  num_cols = num_cols or int(math.ceil(math.sqrt(num)))
  num_rows = int(math.ceil(num / num_cols))
  grid = np.ones(((height + pad) * num_rows + pad, (width + pad) * num_cols + pad, channels),
                 np.float32)
  for i in range(num):
    row, col = divmod(i, num_cols)
    top, left = pad + row * (height + pad), pad + col * (width + pad)
    grid[top:top + height, left:left + width] = images[i]
  grid = (grid * 255).round().astype(np.uint8)
  return grid[..., 0] if channels == 1 else grid


def save_grid(path, images, num_cols=None):
  """Writes an image grid to ``path`` (PNG); returns the path."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  Image.fromarray(image_grid(images, num_cols)).save(path)
  return path
