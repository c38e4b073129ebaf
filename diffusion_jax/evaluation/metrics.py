"""Sample-quality metrics from features and class probabilities, in float64, for any feature network (Inception pool3
for the published numbers, the digits classifier here): FID, IS, KID, precision / recall, and feature statistics
files in pytorch-fid's `.npz` format (`mu`, `sigma`)."""
import warnings

import numpy as np
import scipy.linalg


def check_features(features, name="features"):
  """float64 [N, D] features; NaN or Inf stops the evaluation, fewer samples than dimensions warns."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2:
    raise ValueError(f"{name} must be a [num_samples, dim] array; got shape {f.shape}")
  if not np.isfinite(f).all():
    bad = int((~np.isfinite(f).all(axis=1)).sum())
    raise ValueError(f"{name}: {bad} of {len(f)} feature vectors contain NaN or Inf (diverged samples?); "
                     "evaluation stopped")
  return f


def gaussian_stats(features):
  """(mu, sigma) of the features; a warning when N <= D makes sigma singular."""
  f = check_features(features)
  if len(f) <= f.shape[1]:
    warnings.warn(f"{len(f)} samples of {f.shape[1]}-d features: the covariance is singular and FID is biased; "
                  f"use more than {f.shape[1]} samples (50,000 is the convention)", stacklevel=2)
  return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al. 2017), as pytorch-fid computes it: a ridge eps I
  is added when the square root of S1 S2 is not finite, and an imaginary part above 1e-3 is an error."""
  mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
  s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
  if mu1.shape != mu2.shape or s1.shape != s2.shape:
    raise ValueError(f"Feature statistics differ in shape: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  if not np.isfinite(covmean).all():
    offset = np.eye(s1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"FID: matrix square root has a large imaginary part {np.abs(covmean.imag).max():.3g}")
    covmean = covmean.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid_from_features(f1, f2):
  return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


def inception_score(probs, splits=10):
  """exp(E_x KL(p(y|x) || p(y))) over `splits` equal parts (Salimans et al. 2016); returns (mean, std)."""
  p = np.asarray(probs, np.float64)
  scores = []
  for part in np.array_split(p, splits):
    py = part.mean(axis=0, keepdims=True)
    kl = np.sum(part * (np.log(part + 1e-12) - np.log(py + 1e-12)), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


def kernel_inception_distance(f1, f2, num_subsets=100, subset_size=1000, seed=0):
  """KID (Binkowski et al. 2018): the unbiased MMD^2 with the cubic kernel k(x, y) = (x.y / d + 1)^3, averaged over
  random subsets of both sets; returns (mean, std over subsets)."""
  f1, f2 = check_features(f1, "features 1"), check_features(f2, "features 2")
  d, m = f1.shape[1], min(subset_size, len(f1), len(f2))
  rng = np.random.default_rng(seed)
  kernel = lambda a, b: (a @ b.T / d + 1.0) ** 3
  mmds = []
  for _ in range(num_subsets):
    x, y = f1[rng.choice(len(f1), m, replace=False)], f2[rng.choice(len(f2), m, replace=False)]
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    off_diag = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))
    mmds.append(off_diag(kxx) + off_diag(kyy) - 2.0 * kxy.mean())
  return float(np.mean(mmds)), float(np.std(mmds))


def _sq_dists(a, b):
  return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def _row_chunks(n, chunk=2000):
  return (slice(i, min(i + chunk, n)) for i in range(0, n, chunk))


def precision_recall(real, fake, k=3):
  """Improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of balls reaching
  each point's k-th nearest neighbour; precision is the fraction of fake samples inside the real manifold, recall
  the fraction of real samples inside the fake one. Distances in row chunks, so 50k x 50k fits in memory."""
  real, fake = check_features(real, "real features"), check_features(fake, "fake features")

  def inside(points, manifold):
    radii2 = np.concatenate([np.sort(_sq_dists(manifold[c], manifold), axis=1)[:, k]  # column 0 is the point itself
                             for c in _row_chunks(len(manifold))])
    return float(np.mean(np.concatenate([(_sq_dists(points[c], manifold) <= radii2[None, :]).any(axis=1)
                                         for c in _row_chunks(len(points))])))
  return inside(fake, real), inside(real, fake)


def save_stats(path, mu, sigma):
  """Feature statistics in pytorch-fid's format: an .npz with `mu` [D] and `sigma` [D, D]."""
  np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_stats(path):
  """(mu, sigma) of a pytorch-fid statistics file (also the published ones, e.g. fid_stats_cifar10_train.npz)."""
  with np.load(path) as f:
    if "mu" not in f or "sigma" not in f:
      raise ValueError(f"{path} is not a statistics file: it needs arrays 'mu' and 'sigma', it has {sorted(f.files)}")
    return f["mu"][:], f["sigma"][:]
