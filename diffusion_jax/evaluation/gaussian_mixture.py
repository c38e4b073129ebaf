"""A Gaussian mixture as an exact oracle for samplers: x_0 ~ sum_k w_k N(mu_k, s^2 I). On any Gaussian path
x_t = alpha x_0 + sigma eps its marginal is again a mixture, sum_k w_k N(alpha mu_k, (alpha^2 s^2 + sigma^2) I), so the
denoiser E[x_0 | x_t] and E[eps | x_t] are closed forms, and so are the kernel expectations against the mixture
itself: a sampler driven by the exact model errs only by its discretisation, measured against the true distribution
with no trained network and no feature extractor."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.parametrization import target_on


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
  """Components of weights [K], means [K, D] and one isotropic standard deviation `std`."""
  weights: np.ndarray
  means: np.ndarray
  std: float

  @classmethod
  def ring(cls, num_modes=8, radius=1.0, std=0.05):
    """Equal-weight modes on a circle in 2-D: sharp, well-separated modes, the hard case for few-step solvers."""
    angles = 2 * np.pi * np.arange(num_modes) / num_modes
    return cls(np.full(num_modes, 1.0 / num_modes), radius * np.stack([np.cos(angles), np.sin(angles)], -1), std)

  @property
  def dim(self):
    return self.means.shape[1]

  def sample(self, rng, n):
    """n exact samples [n, D]."""
    k_rng, z_rng = jax.random.split(rng)
    k = jax.random.choice(k_rng, len(self.weights), (n,), p=jnp.asarray(self.weights))
    return jnp.asarray(self.means, jnp.float32)[k] + self.std * jax.random.normal(z_rng, (n, self.dim))

  def model_fn(self, process, prediction="eps"):
    """The exact network of `prediction` on `process`'s path: a function (x_t [B, D], t [B], y) from the components'
    posteriors r_k(x_t), E[x_0 | x_t, k] = mu_k + alpha s^2 (x - alpha mu_k) / v_k and
    E[eps | x_t, k] = sigma (x - alpha mu_k) / v_k with v_k = alpha^2 s^2 + sigma^2 (finite where alpha or sigma
    is 0)."""
    means, s2 = jnp.asarray(self.means, jnp.float32), self.std**2
    log_w = jnp.log(jnp.asarray(self.weights, jnp.float32))

    def fn(x, t, y=None):
      alpha, sigma = process.alpha_sigma(t)
      a, s = alpha[:, None, None], sigma[:, None, None]
      var = a**2 * s2 + s**2  # [B, 1, 1]
      diff = x[:, None, :] - a * means[None]  # [B, K, D]
      logits = log_w - 0.5 * jnp.sum(diff**2, -1) / var[..., 0] - 0.5 * self.dim * jnp.log(var[..., 0])
      r = jax.nn.softmax(logits, -1)[..., None]
      eps = jnp.sum(r * s * diff / var, axis=1)
      x0 = jnp.sum(r * (means[None] + a * s2 * diff / var), axis=1)
      return target_on(process, x0, eps, t, prediction)
    return fn

  def mmd2(self, x, bandwidth, block=2048):
    """The unbiased estimate of MMD^2 between the samples x [N, D] and the mixture itself (Gretton et al. 2012,
    eq. 3, with the mixture's terms exact) for the kernel k(x, y) = exp(-|x - y|^2 / (2 h^2)):
    mean_{i != j} k(x_i, x_j) - 2 mean_i E_y k(x_i, y) + E_{y, y'} k(y, y'), where for y ~ N(mu, s^2 I)
    E_y k(x, y) = (h^2 / (h^2 + s^2))^{D/2} exp(-|x - mu|^2 / (2 (h^2 + s^2))), and y - y' ~ N(mu_j - mu_k, 2 s^2 I)."""
    x = jnp.asarray(x, jnp.float32)
    n, d, h2, s2 = x.shape[0], self.dim, bandwidth**2, self.std**2
    w, mu = np.asarray(self.weights, np.float64), np.asarray(self.means, np.float64)

    def gauss(sq, var):
      return (h2 / var) ** (d / 2) * jnp.exp(-0.5 * sq / var)
    pair = jax.jit(lambda a: jnp.sum(jnp.exp(-0.5 * jnp.sum((a[:, None] - x[None]) ** 2, -1) / h2)))
    xx = sum(float(pair(x[i:i + block])) for i in range(0, n, block)) - n  # without the diagonal's k(x_i, x_i) = 1
    xy = jnp.sum(gauss(jnp.sum((x[:, None] - jnp.asarray(mu, jnp.float32)[None]) ** 2, -1), h2 + s2) * w)
    yy = np.sum(np.outer(w, w) * (h2 / (h2 + 2 * s2)) ** (d / 2)
                * np.exp(-0.5 * np.sum((mu[:, None] - mu[None]) ** 2, -1) / (h2 + 2 * s2)))
    return xx / (n * (n - 1)) - 2 * float(xy) / n + float(yy)

  def moments(self):
    """The exact (mean [D], covariance [D, D])."""
    w, mu = np.asarray(self.weights, np.float64), np.asarray(self.means, np.float64)
    mean = w @ mu
    second = np.einsum("k,ki,kj->ij", w, mu, mu) + self.std**2 * np.eye(self.dim)
    return mean, second - np.outer(mean, mean)

  def mode_weight_error(self, x):
    """Total variation between the mixture's weights and the fractions of samples nearest each mode."""
    nearest = np.argmin(((np.asarray(x)[:, None] - self.means[None]) ** 2).sum(-1), axis=1)
    return 0.5 * float(np.abs(np.bincount(nearest, minlength=len(self.weights)) / len(x) - self.weights).sum())
