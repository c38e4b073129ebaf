"""Sample-quality metrics from features and class probabilities, in float64, for any feature network (Inception pool3
for the published numbers, the digits classifier here): FID, IS, KID, precision / recall, and feature statistics
files in pytorch-fid's `.npz` format (`mu`, `sigma`)."""
import os
import warnings

import numpy as np


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


class RunningStats:
  """Mean and covariance of features that arrive in batches, in float64 (Chan et al.'s pairwise update of the mean and
  the sum of squared deviations), so 50,000 samples need not be held at once."""

  def __init__(self):
    self.n, self.mean, self.m2 = 0, None, None

  def add(self, features):
    f = check_features(features)
    if not len(f):
      return
    mean_b = f.mean(axis=0)
    m2_b = (f - mean_b).T @ (f - mean_b)
    if not self.n:
      self.n, self.mean, self.m2 = len(f), mean_b, m2_b
      return
    n, delta = self.n + len(f), mean_b - self.mean
    self.m2 = self.m2 + m2_b + np.outer(delta, delta) * (self.n * len(f) / n)
    self.mean = self.mean + delta * (len(f) / n)
    self.n = n

  def stats(self):
    """(mu, sigma) with the unbiased covariance, like np.cov; a warning when N <= D makes sigma singular."""
    if self.n < 2:
      raise ValueError(f"Feature statistics need at least 2 samples; got {self.n}")
    d = len(self.mean)
    if self.n <= d:
      warnings.warn(f"{self.n} samples of {d}-d features: the covariance is singular and FID is biased; "
                    f"use more than {d} samples (50,000 is the convention)", stacklevel=2)
    return self.mean, self.m2 / (self.n - 1)


def gaussian_stats(features):
  """(mu, sigma) of the features; a warning when N <= D makes sigma singular."""
  s = RunningStats()
  s.add(features)
  return s.stats()


def psd_sqrt(sigma, name="sigma"):
  """The symmetric square root of a covariance matrix by eigendecomposition; rounding-level eigenvalues count as 0, a
  clearly negative one (an imaginary root) is an error."""
  w, v = np.linalg.eigh((sigma + sigma.T) / 2.0)
  w = _nonnegative(w, f"{name} is not positive semi-definite (eigenvalue {w.min():.3g}); it has no real square root")
  return (v * np.sqrt(w)) @ v.T


def _nonnegative(w, message):
  """Eigenvalues of a positive semi-definite matrix: a clearly negative one (below -1e-6 of the largest) raises
  ValueError(message); those below the rounding level of eigh (D * eps * largest, as numpy's matrix_rank) become zero,
  as their square roots would otherwise add noise of order sqrt(eps)."""
  top = np.abs(w).max()
  if w.min() < -1e-6 * max(top, 1e-30):
    raise ValueError(message)
  return np.where(w > len(w) * np.finfo(w.dtype).eps * top, w, 0.0)


def trace_sqrt_product(sigma1, sigma2):
  """Tr (S1 S2)^(1/2). S1 S2 is similar to the symmetric S1^(1/2) S2 S1^(1/2), so its eigenvalues are real and
  non-negative and eigh finds them even when N <= D makes both matrices singular, where scipy's sqrtm of the
  non-symmetric product (pytorch-fid's route) can return a large imaginary part. A clearly negative eigenvalue, whose
  root would be imaginary, is an error."""
  root = psd_sqrt(sigma1, "sigma1")
  lam = np.linalg.eigvalsh(root @ sigma2 @ root)
  lam = _nonnegative(lam, f"FID: S1 S2 has a negative eigenvalue {lam.min():.3g}, so its square root is imaginary")
  return float(np.sqrt(lam).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2):
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al. 2017), in float64 with the well-conditioned
  trace of the square root above (equal to pytorch-fid's sqrtm on well-conditioned statistics)."""
  mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
  s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
  if mu1.shape != mu2.shape or s1.shape != s2.shape:
    raise ValueError(f"Feature statistics differ in shape: mu {mu1.shape} vs {mu2.shape}, "
                     f"sigma {s1.shape} vs {s2.shape}")
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))


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
  """Feature statistics in pytorch-fid's format: an .npz with `mu` [D] and `sigma` [D, D], written atomically."""
  tmp = f"{path}.tmp.npz"
  np.savez(tmp, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))
  os.replace(tmp, path)


def load_stats(path):
  """(mu, sigma) of a pytorch-fid statistics file (also the published ones, e.g. fid_stats_cifar10_train.npz)."""
  with np.load(path) as f:
    if "mu" not in f or "sigma" not in f:
      raise ValueError(f"{path} is not a statistics file: it needs arrays 'mu' and 'sigma', it has {sorted(f.files)}")
    return f["mu"][:], f["sigma"][:]
