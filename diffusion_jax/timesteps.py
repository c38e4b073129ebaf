"""Training-time distributions, each with sample(rng, batch, path) -> t and log_snr_density(path, lambda), its
density over the path's log-SNR, from which the effective weighting of any formulation follows
(losses.effective_weighting; Kingma & Gao 2023, eq. 8): uniform t (Ho et al. 2020, Song et al. 2021), logit-normal(m,
s) and mode(s) t (Esser et al. 2024, Sec. 3.1), and EDM's log-normal sigma = sigma_t / alpha_t (Karras et al. 2022,
Table 1)."""
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.registry import Registry

TIME_SAMPLINGS = Registry("time sampling")
T_MIN = 1e-5  # the smallest training time of a continuous path (Song et al. 2021)


def _density_over_log_snr(p_t, path, lam):
  """p_t(t) / |d lambda / dt| at t = t(lambda): a density over t carried to lambda (the derivative taken of log_snr,
  not of its inverse, which may be a bisection)."""
  t = path.t_from_log_snr(lam)
  _, dlam = jax.jvp(path.log_snr, (t,), (jnp.ones_like(t),))
  return p_t(t) / jnp.abs(dlam)


@TIME_SAMPLINGS.register("uniform")
class Uniform:
  """t ~ U(t_min, 1)."""

  def __init__(self, t_min=T_MIN):
    self.t_min = t_min

  def sample(self, rng, batch, path):
    return jax.random.uniform(rng, (batch,), minval=self.t_min, maxval=1.0)

  def log_snr_density(self, path, lam):
    inside = lambda t: jnp.where((t >= self.t_min) & (t <= 1.0), 1.0 / (1.0 - self.t_min), 0.0)
    return _density_over_log_snr(inside, path, lam)


@TIME_SAMPLINGS.register("logit_normal")
class LogitNormal:
  """t = sigmoid(m + s n), n ~ N(0, 1) (Esser et al. 2024, eq. 19): p(t) = N(logit t; m, s^2) / (t (1 - t))."""

  def __init__(self, m=0.0, s=1.0):
    self.m, self.s = m, s

  def sample(self, rng, batch, path):
    return jax.nn.sigmoid(self.m + self.s * jax.random.normal(rng, (batch,)))

  def density(self, t):
    logit = jnp.log(t) - jnp.log1p(-t)
    return jnp.exp(-0.5 * jnp.square((logit - self.m) / self.s)) / (self.s * np.sqrt(2 * np.pi) * t * (1 - t))

  def log_snr_density(self, path, lam):
    return _density_over_log_snr(self.density, path, lam)


@TIME_SAMPLINGS.register("mode")
class Mode:
  """t = f(u; s) = 1 - u - s (cos^2(pi u / 2) - 1 + u), u ~ U(0, 1) (Esser et al. 2024, eq. 20): s > 0 puts more
  weight on the middle of the path; s must lie in [-1, 2 / (pi - 2)] for f to be monotone."""

  def __init__(self, s=1.29):
    if not -1.0 <= s <= 2.0 / (np.pi - 2.0):
      raise ValueError(f"mode scale s={s} makes f(u) non-monotone; valid: -1 <= s <= {2.0 / (np.pi - 2.0):.4f}")
    self.s = s

  def f(self, u):
    return 1.0 - u - self.s * (jnp.square(jnp.cos(0.5 * np.pi * u)) - 1.0 + u)

  def sample(self, rng, batch, path):
    return self.f(jax.random.uniform(rng, (batch,)))

  def density(self, t, iterations=40):
    """1 / |f'(u)| at u = f^-1(t), u by bisection (f decreases from 1 to 0)."""
    def halve(_, bounds):
      lo, hi = bounds
      mid = 0.5 * (lo + hi)
      later = self.f(mid) > t  # f(mid) still above t: the root lies at larger u
      return jnp.where(later, mid, lo), jnp.where(later, hi, mid)
    lo, hi = jax.lax.fori_loop(0, iterations, halve, (jnp.zeros_like(t), jnp.ones_like(t)))
    u = 0.5 * (lo + hi)
    return 1.0 / jnp.abs(-1.0 - self.s + 0.5 * np.pi * self.s * jnp.sin(np.pi * u))

  def log_snr_density(self, path, lam):
    return _density_over_log_snr(self.density, path, lam)


@TIME_SAMPLINGS.register("lognormal_sigma")
class LogNormalSigma:
  """ln sigma ~ N(p_mean, p_std^2) for sigma = sigma_t / alpha_t (Karras et al. 2022: p_mean = -1.2, p_std = 1.2),
  so lambda = -2 ln sigma ~ N(-2 p_mean, (2 p_std)^2); t = the path's t_from_log_snr(lambda)."""

  def __init__(self, p_mean=-1.2, p_std=1.2):
    self.p_mean, self.p_std = p_mean, p_std

  def sample(self, rng, batch, path):
    log_sigma = self.p_mean + self.p_std * jax.random.normal(rng, (batch,))
    return path.t_from_log_snr(-2.0 * log_sigma)

  def log_snr_density(self, path, lam):
    mean, std = -2.0 * self.p_mean, 2.0 * self.p_std
    return jnp.exp(-0.5 * jnp.square((lam - mean) / std)) / (std * np.sqrt(2 * np.pi))


def get_time_sampling(name, **kwargs):
  """The time sampling registered as `name` with its parameters (e.g. m, s for logit_normal)."""
  return TIME_SAMPLINGS.get(name)(**kwargs)
