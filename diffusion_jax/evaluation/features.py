"""The feature networks behind the sample-quality metrics, chosen by `config.eval.features` (one name or a comma list,
all fed by one streaming pass over the samples): `inception` (the FID Inception network: FID on pool3, sFID on the
spatial features of mixed_6/conv, IS), `digits` (the in-project digits classifier: FID-digits, IS-digits, class
accuracy), `dinov2` (FD_DINOv2, Stein et al. 2023) and `clip` (FD and CMMD on CLIP image embeddings, Jayasumana et
al. 2024). A Scorer streams batches of images through them and compares each feature set's statistics with the
training split's, cached as pytorch-fid `.npz` files named in every row with their SHA-256."""
import dataclasses
import hashlib
import os
from typing import Callable

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from diffusion_jax import parallel, text
from diffusion_jax.data import get_dataset
from diffusion_jax.evaluation import clip_metrics, digits_classifier, dinov2, inception, metrics
from diffusion_jax.models import clip_text, clip_vision
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
  """apply(images [N, H, W, C] in [-1, 1]) -> ({feature set: [N, dim]}, class probabilities [N, K] or None), numpy
  arrays. `distances` names the Frechet-distance column of each feature set (its dimension in `dims`); the sets in
  `kernel` are also kept whole for CMMD (column cmmd_<name>)."""
  name: str
  apply: Callable
  dims: dict
  distances: dict
  description: str
  dataset_classes: bool  # the probabilities are over the dataset's labels, so they also score class accuracy
  kernel: tuple = ()
  text_embed: Callable = None  # prompts -> embeddings in the space of the kernel set's (CLIPScore)
  prompts: Callable = None  # (labels, count) -> the samples' prompts, or None where they have none


@dataclasses.dataclass(frozen=True)
class MetricNames:
  """Result columns and plot labels of one extractor: fid_inception / is_inception ("FID", "IS"), fid_digits ..."""
  fid: str
  inception_score: str
  inception_score_std: str
  fid_label: str
  is_label: str


DISTANCE_NAMES = {"dinov2": ("fd_dinov2", "FD_DINOv2"), "clip": ("fd_clip", "FD_CLIP")}


def feature_names(features):
  """The feature networks of an eval.features value: one name or a comma-separated list, each registered, no repeats."""
  names = [n.strip() for n in str(features).split(",") if n.strip()]
  for n in names:
    EXTRACTORS.get(n)
  if not names or len(set(names)) != len(names):
    raise ValueError(f"eval.features={features!r} must name each feature network once, e.g. 'inception' or "
                     f"'inception,dinov2'; valid: {', '.join(EXTRACTORS.names())}")
  return names


def metric_names(features):
  """The primary columns (the first network of eval.features): its Frechet distance and IS."""
  name = feature_names(features)[0]
  suffix = "" if name == "inception" else f"-{name}"
  fid, label = DISTANCE_NAMES.get(name, (f"fid_{name}", f"FID{suffix}"))
  return MetricNames(fid, f"is_{name}", f"is_{name}_std", label, f"IS{suffix}")


def batched(fn, batch_size, mesh, desc):
  """fn(params-free batch) -> tuple of arrays, applied to images in jitted batches (batch_size rounded up to a multiple
  of the devices, the last one padded) sharded over the mesh: apply(images) -> tuple of numpy arrays [N, ...]."""
  bs = -(-batch_size // mesh.devices.size) * mesh.devices.size

  def apply(images):
    outs = []
    for i in tqdm(range(0, len(images), bs), desc=desc, mininterval=2.0, disable=len(images) <= 4 * bs):
      batch = images[i:i + bs]
      n = len(batch)
      if n < bs:
        batch = np.concatenate([batch, np.zeros((bs - n,) + batch.shape[1:], batch.dtype)])
      outs.append([np.asarray(o)[:n] for o in fn(parallel.shard_batch(batch, mesh))])
    return tuple(np.concatenate(o) for o in zip(*outs))
  return apply


def inception_apply(params, batch_size=50, mesh=None, spatial=False):
  """images -> (pool3 features [N, 2048], logits [N, 1008][, sFID's spatial features [N, 2023]]) in jitted, sharded
  batches; compiled once."""
  mesh = mesh or parallel.make_mesh()
  net = inception.FIDInceptionV3(spatial=spatial)
  fn = jax.jit(lambda p, x: net.apply({"params": p}, x), out_shardings=parallel.replicated(mesh))
  extract = batched(lambda x: fn(params, x), batch_size, mesh, "inception features")
  return lambda images: extract(check_images(images))


@EXTRACTORS.register("inception")
def inception_extractor(config, cache_dir, mesh):
  """FID on pool3 features, sFID on the spatial features, IS on the softmax of the 1008 logits (as the TF Inception
  Score code)."""
  params = inception.load_params(config.eval.inception_weights or os.environ.get("FID_INCEPTION_WEIGHTS", ""))
  sfid = config.eval.sfid
  extract = inception_apply(params, config.eval.batch_size, mesh, spatial=sfid)

  def apply(images):
    pool, logits, *spatial = extract(images)
    sets = {"pool3": pool, **({"spatial": spatial[0]} if sfid else {})}
    return sets, np.asarray(jax.nn.softmax(logits.astype(np.float64), axis=-1))
  return Extractor("inception", apply, {"pool3": 2048, **({"spatial": 2023} if sfid else {})},
                   {"pool3": "fid_inception", **({"spatial": "sfid_inception"} if sfid else {})},
                   "the FID Inception network (pytorch-fid's 2015-12-05 weights, images resized to 299): FID on its "
                   "2048-d pool3 features, " + ("sFID (Nash et al. 2021) on the first 7 channels of mixed_6/conv "
                   "(2023-d), " if sfid else "") + "IS on the softmax of its 1008 logits", False)


@EXTRACTORS.register("digits")
def digits_extractor(config, cache_dir, mesh):
  """The digits classifier, trained once and cached in cache_dir."""
  if config.data.name != "digits":
    raise ValueError(f"eval.features='digits' needs data.name='digits' (got {config.data.name!r}); "
                     "valid for every dataset: eval.features='inception'")
  params, acc = digits_classifier.load_or_train(config.data, cache_dir, config.eval.classifier_steps)

  def apply(images):
    probs, features = digits_classifier.apply(params, check_images(images, rgb=False))
    return {"penultimate": features}, probs
  return Extractor("digits", apply, {"penultimate": 128}, {"penultimate": "fid_digits"},
                   f"the digits evaluation classifier (held-out accuracy {acc:.4f}): FID-digits on its 128-d "
                   "penultimate features, IS-digits on its softmax", True)


@EXTRACTORS.register("dinov2")
def dinov2_extractor(config, cache_dir, mesh):
  """DINOv2's CLS token (Stein et al. 2023; EDM2's FD_DINOv2: ViT-L/14, bicubic to 224, ImageNet normalisation), with
  the torch.hub models' position-embedding resampling, from config.eval.dinov2_weights."""
  cfg, params = dinov2.load_params(config.eval.dinov2_weights)
  cfg = dataclasses.replace(cfg, interpolate_offset=dinov2.HUB_INTERPOLATE_OFFSET)
  fn = jax.jit(lambda x: dinov2.features(cfg, params, x), out_shardings=parallel.replicated(mesh))
  extract = batched(lambda x: (fn(x),), config.eval.batch_size, mesh, "dinov2 features")
  return Extractor("dinov2", lambda images: ({"cls": extract(check_images(images))[0]}, None),
                   {"cls": cfg.hidden_size}, {"cls": "fd_dinov2"},
                   f"DINOv2 ({cfg.num_hidden_layers} layers, {cfg.hidden_size}-d; {config.eval.dinov2_weights}): "
                   "FD_DINOv2 on its CLS token of images resized bicubically to 224", False)


def clip_text_embedder(directory):
  """prompts -> CLIP's text embeddings [N, projection_dim] with the text tower, projection and tokenizer of a CLIP
  directory (a CLIPModel's: config.json, model.safetensors and its tokenizer files)."""
  cfg, params = clip_text.load_pretrained(directory)
  projection, tokenizer = clip_text.load_projection(directory), text.load_tokenizer(directory)
  net = clip_text.CLIPTextModel(cfg)
  fn = jax.jit(lambda ids, mask: net.apply({"params": params}, ids, mask)[1] @ projection)
  return lambda prompts: np.asarray(fn(*clip_text.tokenize(tokenizer, prompts, cfg.max_position_embeddings)))


def prompt_set(config):
  """The prompts a text run's samples answer, in words, and the function giving them from (labels, count):
  sample.prompt, or the first caption template, filled with each sample's class; None where there are no labels to
  fill it with."""
  t = text.get_text(config)
  prompt = config.sample.prompt or t.templates[0]

  def prompts(labels, n):
    return None if labels is None and "{" in prompt else t.prompts(config.sample.prompt, labels, n)
  return f"the prompt {prompt!r} filled with each sample's class", prompts


@EXTRACTORS.register("clip")
def clip_extractor(config, cache_dir, mesh):
  """CLIP's L2-normalised image embeddings from config.eval.clip_weights: their Frechet distance and CMMD; with
  eval.clip_score, CLIPScore of each image against its prompt (prompt_set)."""
  cfg, params = clip_vision.load_pretrained(config.eval.clip_weights)
  net = clip_vision.CLIPVisionModelWithProjection(cfg)
  fn = jax.jit(lambda x: net.apply({"params": params}, clip_vision.preprocess(x, cfg.image_size)),
               out_shardings=parallel.replicated(mesh))
  extract = batched(lambda x: (fn(x),), config.eval.batch_size, mesh, "clip features")
  description = (f"the CLIP image encoder ({config.eval.clip_weights}, {cfg.image_size} px): FD_CLIP and CMMD "
                 "(Jayasumana et al. 2024: Gaussian RBF kernel, sigma 10, x 1000) on its L2-normalised "
                 f"{cfg.projection_dim}-d embeddings")
  text_embed = prompts = None
  if config.eval.clip_score:
    words, prompts = prompt_set(config)
    text_embed = clip_text_embedder(config.eval.clip_weights)
    description += f", CLIPScore (Hessel et al. 2021: 100 max(cos, 0), averaged) against {words}"
  return Extractor("clip", lambda images: ({"embedding": clip_metrics.l2_normalize(
      extract(check_images(images))[0]).astype(np.float32)}, None),
                   {"embedding": cfg.projection_dim}, {"embedding": "fd_clip"}, description, False,
                   kernel=("embedding",), text_embed=text_embed, prompts=prompts)


SCORE_PREFIXES = ("fid_", "sfid_", "fd_", "is_", "cmmd_", "clip_score")
PROVENANCE = ("features", "references", "num_samples", "class_accuracy")


def is_score_field(key):
  """Whether a row field is a score or its provenance (not a sampler option)."""
  return key.startswith(SCORE_PREFIXES) or key in PROVENANCE


def sha256(path):
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


@dataclasses.dataclass
class Reference:
  """One feature set's reference: statistics (mu, sigma) from `path` (SHA-256 `sha256`), and for the kernel sets the
  embeddings themselves (`embeddings_path`)."""
  path: str
  mu: np.ndarray = None
  sigma: np.ndarray = None
  sha256: str = ""
  embeddings: np.ndarray = None
  embeddings_path: str = ""


class Scorer:
  """The metrics of every network of config.eval.features (Frechet distances of each feature set, IS, CMMD, class
  accuracy) of image sets against the training split's references: `scorer(images, labels)` for an array, or
  `acc = scorer.stream(); acc.add(batch, labels) ...; acc.row()`; each batch goes through every network once."""

  def __init__(self, config, workdir, mesh=None):
    cache = config.eval.cache_dir or workdir
    mesh = mesh or parallel.mesh_for(config)
    names = feature_names(config.eval.features)
    if config.eval.clip_score and "clip" not in names:
      raise ValueError(f"eval.clip_score scores samples with CLIP: add clip to eval.features (now "
                       f"{config.eval.features!r}) and point eval.clip_weights at a CLIP directory")
    if config.eval.clip_score and not text.is_text(config):
      raise ValueError("eval.clip_score scores each sample against its prompt, but this run is not text-conditioned "
                       "(model.context_dim = 0) and has no prompts: set eval.clip_score=False (FD_CLIP and CMMD need "
                       "no prompts)")
    self.extractors = [EXTRACTORS.get(n)(config, cache, mesh) for n in names]
    self.extractor = self.extractors[0]
    self.names = metric_names(config.eval.features)
    self.chunk = 10 * config.eval.batch_size  # images per call of the extractors
    train = f"train{config.eval.reference_num_images or ''}"
    self.references = {}
    for e in self.extractors:
      for key in e.dims:
        stem = e.name if key == next(iter(e.dims)) else f"{e.name}_{key}"
        path = os.path.join(cache, f"reference_stats_{stem}_{train}.npz")
        if e is self.extractor and key == next(iter(e.dims)) and config.eval.reference_stats:
          path = config.eval.reference_stats
        self.references[e.name, key] = Reference(path, embeddings_path=os.path.join(
            cache, f"reference_embeddings_{stem}_{train}.npy") if key in e.kernel else "")
    self.reference_path = self.references[self.extractor.name, next(iter(self.extractor.dims))].path
    self.load_references(config)

  def stream(self):
    return Accumulator(self)

  def __call__(self, images, labels=None):
    acc = self.stream()
    for i in range(0, len(images), self.chunk):
      acc.add(images[i:i + self.chunk], None if labels is None else labels[i:i + self.chunk])
    return acc.row()

  def describe(self):
    refs = "; ".join(f"{e.distances[k]}: {r.path} (sha256 {r.sha256})" for (n, k), r in self.references.items()
                     for e in self.extractors if e.name == n)
    return f"Metrics from {' and from '.join(e.description for e in self.extractors)}. Reference statistics: {refs}."

  def columns(self):
    """Every metric column of the rows, network by network."""
    cols = []
    for e in self.extractors:
      for k, column in e.distances.items():
        cols += [column] + ([f"cmmd_{e.name}"] if k in e.kernel else []) + (["clip_score"] if e.text_embed else [])
      if e.name in ("inception", "digits"):
        cols += [f"is_{e.name}", f"is_{e.name}_std"]
    return cols + (["class_accuracy"] if any(e.dataset_classes for e in self.extractors) else [])

  def provenance(self):
    """The row fields naming what a row was scored with: the networks and each reference file's short SHA-256."""
    return {"features": ",".join(e.name for e in self.extractors),
            "references": ", ".join(f"{os.path.basename(r.path)}@{r.sha256[:12]}" for r in self.references.values())}

  def load_references(self, config):
    """Each reference read from its file (pytorch-fid's format, so published files work), or computed in one pass of
    the first eval.reference_num_images training images (0: all) through every network and cached there."""
    missing = {}
    for (name, key), ref in self.references.items():
      dim = next(e for e in self.extractors if e.name == name).dims[key]
      if os.path.exists(ref.path) and (not ref.embeddings_path or os.path.exists(ref.embeddings_path)):
        ref.mu, ref.sigma = metrics.load_stats(ref.path)
        if ref.mu.shape != (dim,) or ref.sigma.shape != (dim, dim):
          raise ValueError(f"Reference statistics {ref.path} are {ref.mu.shape[0]}-d, but eval.features network "
                           f"{name!r} gives {dim}-d features; point eval.reference_stats at statistics of the same "
                           "network, or delete the file to recompute it")
        if ref.embeddings_path:
          ref.embeddings = np.load(ref.embeddings_path)
      else:
        missing[name, key] = ref
    if missing:
      images = get_dataset(config, "train").images[:config.eval.reference_num_images or None]
      logging.info("Computing reference statistics of %d training images -> %s", len(images),
                   ", ".join(r.path for r in missing.values()))
      acc = Accumulator(self, keep={key for key, r in missing.items() if r.embeddings_path})
      for i in tqdm(range(0, len(images), self.chunk), desc="reference statistics", mininterval=2.0):
        acc.add(images[i:i + self.chunk], networks={n for n, _ in missing})
      for key, ref in missing.items():
        ref.mu, ref.sigma = acc.stats[key].stats()
        if ref.embeddings_path:
          ref.embeddings = np.concatenate(acc.kept[key])
        if jax.process_index() == 0:
          os.makedirs(os.path.dirname(os.path.abspath(ref.path)), exist_ok=True)
          metrics.save_stats(ref.path, ref.mu, ref.sigma)
          if ref.embeddings_path:
            np.save(ref.embeddings_path + ".tmp.npy", ref.embeddings)
            os.replace(ref.embeddings_path + ".tmp.npy", ref.embeddings_path)
    for ref in self.references.values():
      ref.sha256 = sha256(ref.path) if os.path.exists(ref.path) else ""


class Accumulator:
  """Features of a stream of batches through every network: running mean / covariance of each feature set, the kernel
  sets' features themselves (or those of `keep`), every class probability, the labels' hits."""

  def __init__(self, scorer, keep=None):
    self.scorer, self.probs, self.hits, self.clip_scores, self.n = scorer, {}, [], [], 0
    self.stats = {(e.name, k): metrics.RunningStats() for e in scorer.extractors for k in e.dims}
    self.keep = keep if keep is not None else {(e.name, k) for e in scorer.extractors for k in e.kernel}
    self.kept = {key: [] for key in self.keep}

  def add(self, images, labels=None, networks=None, prompts=None):
    """One batch through every network (or those named in `networks`); `prompts` of a CLIPScore run default to the
    prompts of the labels (prompt_set)."""
    for e in self.scorer.extractors:
      if networks is not None and e.name not in networks:
        continue
      features, probs = e.apply(images)
      if e.text_embed and networks is None:
        prompts = prompts if prompts is not None else e.prompts(labels, len(images))
        if prompts is not None:
          self.clip_scores.append(clip_metrics.clip_score(features[e.kernel[0]], e.text_embed(prompts)).per_pair)
      for k, f in features.items():
        self.stats[e.name, k].add(f)
        if (e.name, k) in self.kept:
          self.kept[e.name, k].append(np.asarray(f, np.float32))
      if probs is not None:
        self.probs.setdefault(e.name, []).append(probs)
        if labels is not None and len(labels) and e.dataset_classes:
          self.hits.append(np.argmax(probs, -1) == np.asarray(labels))
    self.n += len(images)

  def row(self):
    row = {}
    for e in self.scorer.extractors:
      for k, column in e.distances.items():
        ref = self.scorer.references[e.name, k]
        row[column] = round(metrics.frechet_distance(*self.stats[e.name, k].stats(), ref.mu, ref.sigma), 3)
        if k in e.kernel:
          row[f"cmmd_{e.name}"] = round(clip_metrics.cmmd(np.concatenate(self.kept[e.name, k]), ref.embeddings), 4)
      if e.name in self.probs:
        is_mean, is_std = metrics.inception_score(np.concatenate(self.probs[e.name]))
        row[f"is_{e.name}"], row[f"is_{e.name}_std"] = round(is_mean, 3), round(is_std, 3)
    if self.clip_scores:
      row["clip_score"] = round(float(np.mean(np.concatenate(self.clip_scores))), 3)
    row["num_samples"] = self.n
    if self.hits:
      row["class_accuracy"] = round(float(np.mean(np.concatenate(self.hits))), 4)
    return {**row, **self.scorer.provenance()}
