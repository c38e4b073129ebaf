"""CLIPScore and CMMD (evaluation/clip_metrics.py) against their formulas written out plainly, and CMMD against the
closed form of the Gaussian kernel's MMD between Gaussians."""
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from diffusion_jax.evaluation import clip_metrics


def test_clip_score_is_the_clamped_scaled_cosine():
  rng = np.random.default_rng(0)
  image, text = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
  text[:5] = -image[:5] + 0.1 * rng.normal(size=(5, 8))  # pairs with negative cosines: clamped to 0
  cos = np.array([i @ t / np.sqrt((i @ i) * (t @ t)) for i, t in zip(image, text)])
  assert (cos < 0).sum() >= 5
  expected = np.array([100.0 * max(c, 0.0) for c in cos])
  score = clip_metrics.clip_score(image, text)
  np.testing.assert_allclose(score.per_pair, expected, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(score.mean, expected.mean(), rtol=1e-12)
  np.testing.assert_allclose(score.std, expected.std(), rtol=1e-12)
  assert score.per_pair[:5].max() == 0.0
  scaled = clip_metrics.clip_score(3.7 * image, 0.2 * text)  # cosines: the embeddings' norms do not matter
  np.testing.assert_allclose(scaled.mean, score.mean, rtol=1e-12)
  with pytest.raises(ValueError, match=r"pairs image i with caption i: got \(40, 8\) image and \(39, 8\) text"):
    clip_metrics.clip_score(image, text[:39])


def direct_cmmd(x, y, sigma=10.0, scale=1000.0):
  """The paper's formula with the full kernel matrices, float64, diagonals included (the reference's estimator)."""
  k = lambda a, b: np.exp(-cdist(a, b, "sqeuclidean") / (2 * sigma**2))
  return scale * (k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())


def test_cmmd_equals_the_full_kernel_formula():
  rng = np.random.default_rng(1)
  x = clip_metrics.l2_normalize(rng.normal(size=(300, 32)))
  y = clip_metrics.l2_normalize(rng.normal(size=(250, 32)) + 0.3)
  # blocks of 64 that divide neither set: partial blocks, symmetric blocks on and off the diagonal
  for block_size in (64, 2048):
    np.testing.assert_allclose(clip_metrics.cmmd(x, y, block_size=block_size), direct_cmmd(x, y), rtol=1e-6)
  np.testing.assert_allclose(clip_metrics.cmmd(x, y, sigma=0.5, scale=1.0, block_size=100),
                             direct_cmmd(x, y, sigma=0.5, scale=1.0), rtol=1e-6)
  np.testing.assert_allclose(clip_metrics.cmmd(x, x), 0.0, atol=1e-9)
  with pytest.raises(ValueError, match="one dimension; got 32 and 16"):
    clip_metrics.cmmd(x, y[:, :16])
  with pytest.raises(ValueError, match=r"non-empty \[N, D\] array of embeddings; got shape \(32,\)"):
    clip_metrics.cmmd(x[0], y)


def expected_kernel(d, sigma, s1, s2, shift):
  """E exp(-|x - y|^2 / (2 sigma^2)) for independent x ~ N(mu1, s1^2 I), y ~ N(mu2, s2^2 I) in d dimensions,
  |mu1 - mu2| = shift: x - y ~ N(mu1 - mu2, (s1^2 + s2^2) I), so with v = sigma^2 + s1^2 + s2^2 it is
  (sigma^2 / v)^{d/2} exp(-shift^2 / (2 v))."""
  v = sigma**2 + s1**2 + s2**2
  return (sigma**2 / v) ** (d / 2) * np.exp(-shift**2 / (2 * v))


def v_statistic_standard_error(x, y, sigma):
  """The standard error of MMD^2 (n = m) from the sample, by the U-statistic variance with the kernel
  h(z_i, z_j) = k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) - k(x_j, y_i) of z_i = (x_i, y_i) (Serfling 1980, 5.2.1;
  Gretton et al. 2012, Lemma 6): Var = 4 zeta_1 / n + 2 zeta_2 / n^2, zeta_1 = Var_z E[h(z, z') | z] (the first-order
  term, the whole of it when the distributions differ), zeta_2 = E h^2 (the degenerate second-order term, all that
  is left when they are equal). The V-statistic differs from the U-statistic by O(1/n), the bias accounted for in
  the expectation."""
  k = lambda a, b: np.exp(-cdist(a, b, "sqeuclidean") / (2 * sigma**2))
  kxy = k(x, y)
  h = k(x, x) + k(y, y) - kxy - kxy.T
  n = len(x)
  off = ~np.eye(n, dtype=bool)
  row_means = np.where(off, h, 0.0).sum(1) / (n - 1)
  zeta1, zeta2 = row_means.var(), (h[off] ** 2).mean()
  return np.sqrt(4 * zeta1 / n + 2 * zeta2 / n**2)


@pytest.mark.parametrize("s1,s2,shift", [(1.0, 2.0, 5.0), (1.0, 1.0, 0.0), (1.0, 1.0, 1.0), (1.0, 1.0, 2.0),
                                         (1.0, 1.0, 4.0)])
def test_cmmd_matches_the_closed_form_on_gaussians(s1, s2, shift):
  # n = m = 2000 samples in d = 4 dimensions, the default sigma = 10 and scale = 1000. The estimator's expectation
  # (diagonals included: mean K_xx = 1/n + (1 - 1/n) mean_{i != j} K_xx) is exact in closed form; the estimate lies
  # within 4 standard errors of it (the statistic is asymptotically normal: a 4-sigma miss has probability ~6e-5;
  # over 20 seeds of each case the standardised errors had a standard deviation of ~0.9, ~0.5 for equal
  # distributions, where the estimate of the degenerate term is conservative), and the population MMD^2 * 1000
  # differs from that expectation only by the O(1/n) diagonal bias.
  d, n, sigma, scale = 4, 2000, 10.0, 1000.0
  rng = np.random.default_rng(int(10 * s2 + shift))
  x = s1 * rng.normal(size=(n, d))
  y = s2 * rng.normal(size=(n, d)) + np.array([shift, 0.0, 0.0, 0.0])
  e_xx, e_yy = expected_kernel(d, sigma, s1, s1, 0.0), expected_kernel(d, sigma, s2, s2, 0.0)
  e_xy = expected_kernel(d, sigma, s1, s2, shift)
  population = scale * (e_xx + e_yy - 2 * e_xy)
  expected = scale * ((1 + (n - 1) * e_xx) / n + (1 + (n - 1) * e_yy) / n - 2 * e_xy)
  tol = 4 * scale * v_statistic_standard_error(x, y, sigma)
  value = clip_metrics.cmmd(x, y, sigma=sigma, scale=scale)
  assert abs(value - expected) < tol, (value, expected, population, tol)
  if shift == 0.0 and s1 == s2:
    assert population == 0.0 and value < 0.5  # the same distribution: ~0 (the V-statistic's bias is ~0.04)
  if shift == 5.0:
    assert tol < 0.1 * population  # the check resolves the closed form to 10%


def test_cmmd_grows_with_the_mean_shift():
  rng = np.random.default_rng(3)
  x, z = rng.normal(size=(1000, 4)), rng.normal(size=(1000, 4))
  values = [clip_metrics.cmmd(x, z + shift / 2.0) for shift in range(6)]  # means |shift| apart
  assert values[0] < 0.05 * values[1] and all(a < b for a, b in zip(values, values[1:])), values
