"""The networks behind FID and IS, chosen by `config.eval.features`: `inception` (the FID Inception network: the
published numbers) and `digits` (the in-project digits classifier). A Scorer streams batches of images through one and
compares their statistics with the training split's, cached as a pytorch-fid `.npz`."""
import dataclasses
import os
from typing import Callable

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from diffusion_jax import parallel
from diffusion_jax.data import get_dataset
from diffusion_jax.evaluation import digits_classifier, inception, metrics
from diffusion_jax.registry import Registry

EXTRACTORS = Registry("feature extractor")


def check_images(images, rgb=True):
  """float32 [N, H, W, C] in [-1, 1]; with rgb, grayscale (C = 1) is repeated to 3 channels.
  Anything else is refused."""
  x = np.asarray(images)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"Images must be an [N, H, W, C] array with C = 1 or 3 (NHWC); got shape {x.shape}")
  if not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"Images must be floats in [-1, 1]; got dtype {x.dtype} (uint8 images: x / 127.5 - 1)")
  if x.size and (np.nanmin(x) < -1.0 - 1e-3 or np.nanmax(x) > 1.0 + 1e-3):
    raise ValueError(f"Images must lie in [-1, 1]; got values in [{np.nanmin(x):.3g}, {np.nanmax(x):.3g}]")
  x = x.astype(np.float32)
  return np.repeat(x, 3, axis=-1) if rgb and x.shape[-1] == 1 else x


@dataclasses.dataclass(frozen=True)
class Extractor:
  """apply(images [N, H, W, C] in [-1, 1]) -> (features [N, dim], class probabilities [N, K]), numpy arrays."""
  name: str
  apply: Callable
  dim: int
  description: str
  dataset_classes: bool  # the probabilities are over the dataset's labels, so they also score class accuracy


@dataclasses.dataclass(frozen=True)
class MetricNames:
  """Result columns and plot labels of one extractor: fid_inception / is_inception ("FID", "IS"), fid_digits ..."""
  fid: str
  inception_score: str
  inception_score_std: str
  fid_label: str
  is_label: str


def metric_names(features):
  suffix = "" if features == "inception" else f"-{features}"
  return MetricNames(f"fid_{features}", f"is_{features}", f"is_{features}_std", f"FID{suffix}", f"IS{suffix}")


def inception_apply(params, batch_size=50, mesh=None):
  """images -> (pool3 features [N, 2048], logits [N, 1008]) in jitted batches (batch_size rounded up to a multiple of
  the devices, the last one padded) sharded over the mesh; compiled once."""
  mesh = mesh or parallel.make_mesh()
  bs = -(-batch_size // mesh.devices.size) * mesh.devices.size
  fn = jax.jit(lambda p, x: inception.FIDInceptionV3().apply({"params": p}, x), out_shardings=parallel.replicated(mesh))

  def apply(images):
    images = check_images(images)
    pools, logits = [], []
    for i in tqdm(range(0, len(images), bs), desc="inception features", mininterval=2.0, disable=len(images) <= 4 * bs):
      batch = images[i:i + bs]
      n = len(batch)
      if n < bs:
        batch = np.concatenate([batch, np.zeros((bs - n,) + batch.shape[1:], batch.dtype)])
      p, lg = fn(params, parallel.shard_batch(batch, mesh))
      pools.append(np.asarray(p)[:n])
      logits.append(np.asarray(lg)[:n])
    return np.concatenate(pools), np.concatenate(logits)
  return apply


@EXTRACTORS.register("inception")
def inception_extractor(config, cache_dir, mesh):
  """FID on pool3 features, IS on the softmax of the 1008 logits (as the TF Inception Score code)."""
  params = inception.load_params(config.eval.inception_weights or os.environ.get("FID_INCEPTION_WEIGHTS", ""))
  extract = inception_apply(params, config.eval.batch_size, mesh)

  def apply(images):
    pool, logits = extract(images)
    return pool, np.asarray(jax.nn.softmax(logits.astype(np.float64), axis=-1))
  return Extractor("inception", apply, 2048, "the FID Inception network (pytorch-fid's 2015-12-05 weights, images "
                   "resized to 299): FID on its 2048-d pool3 features, IS on the softmax of its 1008 logits", False)


@EXTRACTORS.register("digits")
def digits_extractor(config, cache_dir, mesh):
  """The digits classifier, trained once and cached in cache_dir."""
  if config.data.name != "digits":
    raise ValueError(f"eval.features='digits' needs data.name='digits' (got {config.data.name!r}); "
                     "valid for every dataset: eval.features='inception'")
  params, acc = digits_classifier.load_or_train(config.data, cache_dir, config.eval.classifier_steps)

  def apply(images):
    probs, features = digits_classifier.apply(params, check_images(images, rgb=False))
    return features, probs
  return Extractor("digits", apply, 128,
                   f"the digits evaluation classifier (held-out accuracy {acc:.4f}): FID-digits on its 128-d "
                   "penultimate features, IS-digits on its softmax", True)


class Scorer:
  """FID / IS (10 splits) / class accuracy of image sets against the reference statistics of the training split:
  `scorer(images, labels)` for an array, or `acc = scorer.stream(); acc.add(batch, labels) ...; acc.row()`."""

  def __init__(self, config, workdir, mesh=None):
    cache = config.eval.cache_dir or workdir
    self.extractor = EXTRACTORS.get(config.eval.features)(config, cache, mesh or parallel.mesh_for(config))
    self.names = metric_names(self.extractor.name)
    self.chunk = 10 * config.eval.batch_size  # images per call of the extractor
    self.reference_path = config.eval.reference_stats or os.path.join(
        cache, f"reference_stats_{self.extractor.name}_train{config.eval.reference_num_images or ''}.npz")
    self.reference = self.reference_stats(config)

  def stream(self):
    return Accumulator(self)

  def __call__(self, images, labels=None):
    acc = self.stream()
    for i in range(0, len(images), self.chunk):
      acc.add(images[i:i + self.chunk], None if labels is None else labels[i:i + self.chunk])
    return acc.row()

  def describe(self):
    return f"Metrics from {self.extractor.description}; reference statistics {self.reference_path}."

  def reference_stats(self, config):
    """(mu, sigma) read from reference_path (pytorch-fid's format, so published files work), or computed from the
    first eval.reference_num_images training images (0: all) and cached there."""
    path, dim = self.reference_path, self.extractor.dim
    if os.path.exists(path):
      mu, sigma = metrics.load_stats(path)
      if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ValueError(f"Reference statistics {path} are {mu.shape[0]}-d, but eval.features="
                         f"{self.extractor.name!r} gives {dim}-d features; point eval.reference_stats at statistics "
                         "of the same network, or delete the file to recompute it")
      return mu, sigma
    images = get_dataset(config, "train").images[:config.eval.reference_num_images or None]
    logging.info("Computing reference statistics of %d training images -> %s", len(images), path)
    stats = metrics.RunningStats()
    for i in tqdm(range(0, len(images), self.chunk), desc="reference statistics", mininterval=2.0):
      stats.add(self.extractor.apply(images[i:i + self.chunk])[0])
    mu, sigma = stats.stats()
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      metrics.save_stats(path, mu, sigma)
    return mu, sigma


class Accumulator:
  """Features of a stream of batches: running mean / covariance, every class probability, the labels' hits."""

  def __init__(self, scorer):
    self.scorer, self.stats, self.probs, self.hits = scorer, metrics.RunningStats(), [], []

  def add(self, images, labels=None):
    features, probs = self.scorer.extractor.apply(images)
    self.stats.add(features)
    self.probs.append(probs)
    if labels is not None and len(labels) and self.scorer.extractor.dataset_classes:
      self.hits.append(np.argmax(probs, -1) == np.asarray(labels))

  def row(self):
    names = self.scorer.names
    is_mean, is_std = metrics.inception_score(np.concatenate(self.probs))
    row = {names.fid: round(metrics.frechet_distance(*self.stats.stats(), *self.scorer.reference), 3),
           names.inception_score: round(is_mean, 3), names.inception_score_std: round(is_std, 3),
           "num_samples": self.stats.n}
    if self.hits:
      row["class_accuracy"] = round(float(np.mean(np.concatenate(self.hits))), 4)
    return row
