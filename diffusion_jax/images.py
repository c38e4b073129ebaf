"""Image grids as PNG files."""
import os

import numpy as np
from PIL import Image


def to_uint8(x):
  return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def save_grid(images, path, nrow=10, scale=None):
  """Writes [N, H, W, C] images in [-1, 1] as one PNG, `nrow` images per row, upscaled to at least ~32 px per image."""
  x = to_uint8(images)
  n, h, w, c = x.shape
  ncol = -(-n // nrow)
  pad = np.zeros((ncol * nrow - n, h, w, c), np.uint8)
  x = np.concatenate([x, pad]).reshape(ncol, nrow, h, w, c)
  x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), constant_values=255)
  grid = x.transpose(0, 2, 1, 3, 4).reshape(ncol * (h + 2), nrow * (w + 2), c)
  scale = scale or max(1, 32 // h)
  grid = grid.repeat(scale, 0).repeat(scale, 1)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)
