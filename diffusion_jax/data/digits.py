"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download), scaled to [-1, 1], fixed split."""
import numpy as np
from sklearn.datasets import load_digits

from diffusion_jax.data.base import DATASETS, ArrayDataset

NUM_HELD_OUT = 297  # fixed held-out split: 1,500 train / 297 eval


@DATASETS.register("digits")
def digits(data_config, split, needed=None):
  """All of it on every process (a few hundred kB); each process's batch rows are index slices of it."""
  d = load_digits()
  images = (d.images.astype(np.float32) / 8.0 - 1.0)[..., None]  # pixel values 0..16 -> [-1, 1]
  perm = np.random.default_rng(0).permutation(len(images))
  idx = perm[NUM_HELD_OUT:] if split == "train" else perm[:NUM_HELD_OUT]
  return ArrayDataset(images[idx], d.target[idx].astype(np.int32), num_classes=10)
