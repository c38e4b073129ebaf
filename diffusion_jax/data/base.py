"""A dataset is an in-memory array of images in [-1, 1] (NHWC) and integer labels; batches are a pure function of
(seed, step), so a resumed run sees exactly the batches an uninterrupted run would."""
import dataclasses

import numpy as np

from diffusion_jax.registry import Registry

DATASETS = Registry("dataset")


@dataclasses.dataclass
class ArrayDataset:
  images: np.ndarray  # [N, H, W, C] float32 in [-1, 1]
  labels: np.ndarray  # [N] int32
  num_classes: int

  def __len__(self):
    return len(self.images)

  def batch(self, seed, step, batch_size, rows=slice(None)):
    """Rows `rows` (this process's, in a run of several) of the global batch of a training step: epoch-wise
    permutations seeded by (seed, epoch), so the global batch is the same whatever the number of processes."""
    n = len(self.images)
    idx = np.empty(batch_size, np.int64)
    start = step * batch_size
    for k in range(batch_size):
      epoch, pos = divmod(start + k, n)
      if k == 0 or pos == 0:
        perm = np.random.default_rng([seed, epoch]).permutation(n)
      idx[k] = perm[pos]
    return self.images[idx[rows]], self.labels[idx[rows]]


def get_dataset(config, split):
  """Builds the dataset named by `config.data.name` for split 'train' or 'eval'."""
  if split not in ("train", "eval"):
    raise ValueError(f"Unknown split {split!r}; valid splits: train, eval")
  return DATASETS.get(config.data.name)(config.data, split)
