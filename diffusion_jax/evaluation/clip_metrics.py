"""Metrics on CLIP embeddings (models/clip_vision.py, models/clip_text.py): CLIPScore, the image-text agreement of
text-to-image samples (Hessel et al. 2021), and CMMD, the kernel distance between two image sets proposed to replace
FID (Jayasumana et al. 2024)."""
from typing import NamedTuple

import numpy as np
from absl import logging


class CLIPScore(NamedTuple):
  mean: float  # the reported CLIPScore
  std: float  # the spread of the per-pair scores (not the standard error of the mean)
  per_pair: np.ndarray  # [N]


def _embeddings(x, name):
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or not len(x):
    raise ValueError(f"{name} must be a non-empty [N, D] array of embeddings; got shape {x.shape}")
  return x


def l2_normalize(x):
  """Rows scaled to unit norm: CLIP's embedding of an image or a caption, as CMMD's reference computes it."""
  x = _embeddings(x, "Embeddings")
  norms = np.linalg.norm(x, axis=-1, keepdims=True)
  if not np.all(norms > 0):
    raise ValueError("An embedding has norm 0 and no direction")
  return x / norms


def clip_score(image_embeds, text_embeds, w=100.0):
  """CLIPScore (Hessel et al. 2021, Eq. 1) of N image-caption pairs, [N, D] each (CLIP's image_embeds and text_embeds,
  normalised here): w * max(cos(image_i, text_i), 0) per pair and its mean over pairs, with w = 100 as torchmetrics'
  clip_score and most text-to-image papers report it (Hessel et al. use w = 2.5). torchmetrics clamps the mean
  instead of each pair: the two agree unless some pair's cosine is negative. Computed in float64."""
  x, y = l2_normalize(image_embeds), l2_normalize(text_embeds)
  if x.shape != y.shape:
    raise ValueError(f"CLIPScore pairs image i with caption i: got {x.shape} image and {y.shape} text embeddings")
  per_pair = w * np.maximum(np.sum(x * y, axis=-1), 0.0)
  return CLIPScore(float(per_pair.mean()), float(per_pair.std()), per_pair)


def _mean_kernel(a, b, gamma, block_size, symmetric):
  """mean_ij exp(-gamma |a_i - b_j|^2) over all pairs, diagonal included, in blocks of block_size x block_size; with
  `symmetric` (a is b) only the blocks on and above the diagonal, those above counted twice."""
  a_sq, b_sq = np.sum(a * a, axis=1), np.sum(b * b, axis=1)
  total = 0.0
  for i in range(0, len(a), block_size):
    for j in range(i if symmetric else 0, len(b), block_size):
      k = a[i:i + block_size] @ b[j:j + block_size].T
      k *= 2.0  # -|a - b|^2 = 2 a.b - |a|^2 - |b|^2, the reference's expansion
      k -= a_sq[i:i + block_size, None]
      k -= b_sq[None, j:j + block_size]
      k *= gamma
      s = np.exp(k, out=k).sum()
      total += 2.0 * s if symmetric and i != j else s
  return total / (len(a) * len(b))


def cmmd(x_embeds, y_embeds, sigma=10.0, scale=1000.0, block_size=2048):
  """CMMD (Jayasumana et al. 2024): scale * MMD^2 between embedding sets x [n, D] and y [m, D] under the Gaussian RBF
  kernel k(x, y) = exp(-gamma |x - y|^2), gamma = 1 / (2 sigma^2), sigma = 10, scale = 1000. The estimator of the
  reference code (google-research/cmmd/distance.py, `mmd`): the biased, minimum-variance V-statistic (Gretton et al.
  2012, Eq. 5), mean(K_xx) + mean(K_yy) - 2 mean(K_xy), each mean over all pairs with the diagonals k(x_i, x_i) = 1
  included, squared distances expanded as |x|^2 + |y|^2 - 2 x.y. Its embeddings are L2-normalised CLIP ViT-L/14@336px
  image embeddings (l2_normalize). Here in float64 NumPy (the reference: float32 JAX), one block of
  block_size x block_size kernel entries at a time, so the memory beyond the embeddings is O(block_size^2) whatever
  n and m."""
  x, y = _embeddings(x_embeds, "x_embeds"), _embeddings(y_embeds, "y_embeds")
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"CMMD compares embeddings of one dimension; got {x.shape[1]} and {y.shape[1]}")
  norms = np.concatenate([np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)])
  if np.max(np.abs(norms - 1.0)) > 1e-3:
    logging.warning("CMMD's embeddings are L2-normalised CLIP embeddings (l2_normalize); these have norms in "
                    "[%.3g, %.3g]", norms.min(), norms.max())
  gamma = 1.0 / (2.0 * sigma**2)
  k_xx = _mean_kernel(x, x, gamma, block_size, symmetric=True)
  k_yy = _mean_kernel(y, y, gamma, block_size, symmetric=True)
  k_xy = _mean_kernel(x, y, gamma, block_size, symmetric=False)
  return float(scale * (k_xx + k_yy - 2.0 * k_xy))
