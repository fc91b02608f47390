"""PNG grids of samples and reconstructions (no plotting library needed).

``labelled_rows`` lays out one labelled row per model under the originals, the
side-by-side reconstruction comparison of Fig. 5.6 (section 5.3.3).
"""

import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["save_grid", "image_grid", "labelled_rows", "save_labelled_rows", "IMAGE_EXTENSIONS"]

# File names the figures may take (PIL picks the format from the extension).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".pdf", ".tif", ".tiff", ".bmp")


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


def labelled_rows(rows, labels, pad=1, scale=1, margin=4):
  """Stacks rows of images into one RGB uint8 array, each row's label at its left.

  Args:
    rows: R arrays ``[N, H, W, C]`` in [0, 1] of one shape (e.g. originals,
      then one model's reconstructions of them per row).
    labels: R strings.
    pad: pixels between images (before scaling).
    scale: integer nearest-neighbour magnification of the whole grid.
    margin: pixels around the labels.

  Returns:
    uint8 ``[height, width, 3]``.
  """
  if len(rows) != len(labels) or not rows:
    raise ValueError(f"need one label per row, got {len(rows)} rows and {len(labels)} labels")
  num_cols = len(rows[0])
  grid = image_grid(np.concatenate([np.asarray(r) for r in rows]), num_cols, pad)
  if grid.ndim == 2:
    grid = np.repeat(grid[..., None], 3, axis=-1)
  grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
  font = ImageFont.load_default()
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  boxes = [measure.textbbox((0, 0), label, font=font) for label in labels]
  label_width = max(box[2] for box in boxes) + 2 * margin
  canvas = Image.new("RGB", (label_width + grid.shape[1], grid.shape[0]), "white")
  canvas.paste(Image.fromarray(grid), (label_width, 0))
  draw = ImageDraw.Draw(canvas)
  row_height = grid.shape[0] / len(rows)
  for row, (label, box) in enumerate(zip(labels, boxes)):
    top = row * row_height + (row_height - (box[3] - box[1])) / 2 - box[1]
    draw.text((margin, top), label, fill="black", font=font)
  return np.asarray(canvas)


def save_labelled_rows(path, rows, labels, scale=1):
  """Writes ``labelled_rows(rows, labels, scale=scale)`` to ``path`` (PNG); returns the path."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  Image.fromarray(labelled_rows(rows, labels, scale=scale)).save(path)
  return path
