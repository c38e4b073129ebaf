"""A dataset is an in-memory array of images in [-1, 1] (NHWC) and integer labels; batches are a pure function of
(seed, step), so a resumed run sees exactly the batches an uninterrupted run would, whatever the number of processes."""
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
    permutations seeded by (*seed, epoch), so the global batch is the same whatever the number of processes."""
    n = len(self.images)
    idx = np.empty(batch_size, np.int64)
    start = step * batch_size
    for k in range(batch_size):
      epoch, pos = divmod(start + k, n)
      if k == 0 or pos == 0:
        perm = np.random.default_rng([*np.atleast_1d(seed), epoch]).permutation(n)
      idx[k] = perm[pos]
    return self.images[idx[rows]], self.labels[idx[rows]]


def lanes_of(rows, batch_size, num_lanes):
  """The lanes that hold rows `rows` of a global batch: lane j holds rows [j m, (j + 1) m),
  m = batch_size / num_lanes."""
  if batch_size % num_lanes:
    raise ValueError(f"data.lanes={num_lanes} does not divide the global batch size {batch_size}; use a divisor of "
                     "the batch size (a multiple of the process count, so that each process reads only its part)")
  m = batch_size // num_lanes
  start, stop, _ = rows.indices(batch_size)
  return range(start // m, -(-stop // m))


@dataclasses.dataclass
class LaneDataset:
  """A dataset read in `num_lanes` even parts (`tfds.even_splits`): lane j is an epoch-permuted stream of its own that
  fills rows [j m, (j + 1) m) of every global batch, so a process loads only the lanes of its rows, and the global
  batch is the same whatever the number of processes. `lanes` holds the loaded ones."""
  lanes: dict  # lane index -> ArrayDataset
  num_lanes: int
  num_classes: int

  @property
  def images(self):
    return np.concatenate([self.lanes[j].images for j in sorted(self.lanes)])

  @property
  def labels(self):
    return np.concatenate([self.lanes[j].labels for j in sorted(self.lanes)])

  def __len__(self):
    return sum(len(lane) for lane in self.lanes.values())

  def batch(self, seed, step, batch_size, rows=slice(None)):
    start, stop, _ = rows.indices(batch_size)
    m = batch_size // self.num_lanes
    parts = []
    for j in lanes_of(rows, batch_size, self.num_lanes):
      if j not in self.lanes:
        raise ValueError(f"Rows {start}:{stop} of the batch need lane {j}, but this process loaded lanes "
                         f"{sorted(self.lanes)} of {self.num_lanes}; load the dataset for the same rows")
      parts.append(self.lanes[j].batch((seed, j), step, m, slice(max(start - j * m, 0), min(stop - j * m, m))))
    return tuple(np.concatenate(p) for p in zip(*parts))


def get_dataset(config, split, rows=None):
  """The dataset named by `config.data.name` for split 'train' or 'eval'. `rows`: this process's rows of every global
  training batch (parallel.local_rows); a dataset read in lanes (TFDS) then loads only the lanes of those rows.
  Default: all of it."""
  if split not in ("train", "eval"):
    raise ValueError(f"Unknown split {split!r}; valid splits: train, eval")
  needed = None if rows is None else (rows, config.training.batch_size)
  return DATASETS.get(config.data.name)(config.data, split, needed)
