"""The contract every diffusion process meets: a Gaussian path x_t = alpha(t) x_0 + sigma(t) eps on t in [0, 1]
(Kingma et al. 2021, eq. 1). From alpha and sigma alone follow the log-SNR lambda(t) = log(alpha^2 / sigma^2), its
inverse, the prior N(0, sigma(1)^2 I) at t = 1 and the linear SDE dx = f(t) x dt + g(t) dw with the same marginals,
f = d log alpha / dt and g^2 = d sigma^2 / dt - 2 f sigma^2 = -sigma^2 d lambda / dt (Kingma et al. 2021, App. A;
Song et al. 2021, eq. 5), derivatives by JAX. A process overrides what it knows in closed form."""
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.parametrization import bcast


class GaussianPath:
  """x_t = alpha(t) x_0 + sigma(t) eps. Subclasses give alpha_sigma(t); everything else derives from it."""

  def alpha_sigma(self, t):
    """(alpha_t, sigma_t) for t in [0, 1]."""
    raise NotImplementedError

  def log_snr(self, t):
    """lambda(t) = log(alpha_t^2 / sigma_t^2), decreasing in t."""
    alpha, sigma = self.alpha_sigma(jnp.asarray(t, jnp.float32))
    return 2.0 * (jnp.log(alpha) - jnp.log(sigma))

  def t_from_log_snr(self, lam, iterations=40):
    """The t with log_snr(t) = lam, by bisection on [0, 1] (lambda decreases in t); clamped at the ends."""
    lam = jnp.asarray(lam, jnp.float32)

    def halve(_, bounds):
      lo, hi = bounds
      mid = 0.5 * (lo + hi)
      above = self.log_snr(mid) > lam  # mid is still too clean: the answer lies later
      return jnp.where(above, mid, lo), jnp.where(above, hi, mid)
    lo, hi = jax.lax.fori_loop(0, iterations, halve, (jnp.zeros_like(lam), jnp.ones_like(lam)))
    return 0.5 * (lo + hi)

  def drift_diffusion(self, t):
    """(f(t), g(t)^2) of the linear SDE with this path's marginals: f = d log alpha / dt,
    g^2 = -sigma^2 d lambda / dt."""
    t = jnp.asarray(t, jnp.float32)
    log_alpha = lambda s: jnp.log(self.alpha_sigma(s)[0])
    f = jax.jvp(log_alpha, (t,), (jnp.ones_like(t),))[1]
    dlam = jax.jvp(self.log_snr, (t,), (jnp.ones_like(t),))[1]
    return f, -jnp.square(self.alpha_sigma(t)[1]) * dlam

  def sde(self, x, t):
    """(drift f(t) x, diffusion g(t))."""
    f, g2 = self.drift_diffusion(t)
    return bcast(f, x) * x, jnp.sqrt(g2)

  def marginal_prob(self, x0, t):
    """(mean alpha_t x0, std sigma_t) of p_t(x | x0)."""
    alpha, sigma = self.alpha_sigma(t)
    return bcast(alpha, x0) * x0, sigma

  def prior_std(self):
    """The std of the prior p_1 = N(0, sigma(1)^2 I), which neglects alpha(1) x_0."""
    with jax.ensure_compile_time_eval():  # a constant, also inside a jitted sampler
      return float(self.alpha_sigma(jnp.float32(1.0))[1])

  def prior_sampling(self, rng, shape):
    return self.prior_std() * jax.random.normal(rng, shape)

  def prior_logp(self, z):
    """log N(z; 0, sigma(1)^2 I), summed over all but the batch axis."""
    s, n = self.prior_std(), np.prod(z.shape[1:])
    return -0.5 * n * np.log(2 * np.pi * s**2) - jnp.sum(z**2, axis=tuple(range(1, z.ndim))) / (2 * s**2)


class VarianceExploding(GaussianPath):
  """alpha = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t: the VE path (Song et al. 2021), f = 0 and
  g^2 = 2 sigma^2 log(sigma_max / sigma_min)."""

  def __init__(self, sigma_min=0.01, sigma_max=50.0):
    self.sigma_min, self.sigma_max = sigma_min, sigma_max

  def sigma(self, t):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def alpha_sigma(self, t):
    return jnp.ones_like(t), self.sigma(t)

  def t_from_log_snr(self, lam):
    return jnp.clip((-0.5 * lam - np.log(self.sigma_min)) / np.log(self.sigma_max / self.sigma_min), 0.0, 1.0)

  def drift_diffusion(self, t):
    return jnp.zeros_like(t), 2.0 * np.log(self.sigma_max / self.sigma_min) * jnp.square(self.sigma(t))


def shift_time(t, shift):
  """t' = s t / (1 + (s - 1) t) (Esser et al. 2024, eq. 23): the rectified-flow time of log-SNR lambda(t) - 2 log s,
  where images of s^2 times as many pixels see the noise they saw at t; shift_time(., 1 / s) is its inverse."""
  return shift * t / (1.0 + (shift - 1.0) * t)


def resolution_shift(pixels, base_pixels=256 * 256):
  """SD3's shift for images of `pixels` pixels against `base_pixels`: s = sqrt(pixels / base_pixels)."""
  return float(np.sqrt(pixels / base_pixels))


class RectifiedFlow(GaussianPath):
  """alpha = 1 - t, sigma = t: rectified flow (Liu et al. 2022), the conditional optimal-transport path of flow
  matching (Lipman et al. 2023); f = -1 / (1 - t), g^2 = 2 t / (1 - t), both singular at t = 1. With shift s != 1,
  t runs through shift_time(t, s): Stable Diffusion 3's resolution-dependent path (Esser et al. 2024, Sec. 5.3.2),
  log-SNR lambda(t) - 2 log s, so uniform training times and uniform sampler grids both spend more time at high
  noise."""
  shift = 1.0

  def alpha_sigma(self, t):
    u = shift_time(jnp.asarray(t, jnp.float32), self.shift)
    return 1.0 - u, u

  def t_from_log_snr(self, lam):
    u = jax.nn.sigmoid(-0.5 * jnp.asarray(lam, jnp.float32))  # lambda = 2 log((1 - u) / u)
    return shift_time(u, 1.0 / self.shift)

  def drift_diffusion(self, t):
    t = jnp.asarray(t, jnp.float32)
    u, du = shift_time(t, self.shift), self.shift / jnp.square(1.0 + (self.shift - 1.0) * t)
    return -du / (1.0 - u), 2.0 * u * du / (1.0 - u)


class CosineInterpolant(GaussianPath):
  """alpha = cos(pi t / 2), sigma = sin(pi t / 2): SiT's generalized variance-preserving (GVP) interpolant (Ma et al.
  2024), alpha^2 + sigma^2 = 1; f = -pi/2 tan(pi t / 2), g^2 = pi tan(pi t / 2), finite at t = 0 where the general
  formula is 0 x infinity. With shift s != 1 the log-SNR is lambda(t) - 2 log s (alpha : sigma = cos : s sin, still
  alpha^2 + sigma^2 = 1), the resolution shift of simple diffusion (Hoogeboom et al. 2023) and SD3 on this path."""
  shift = 1.0

  def alpha_sigma(self, t):
    t = jnp.asarray(t, jnp.float32)
    cos, sin = jnp.sin(0.5 * np.pi * (1.0 - t)), self.shift * jnp.sin(0.5 * np.pi * t)  # alpha = 0 at t = 1 exactly
    if self.shift == 1.0:
      return cos, sin
    norm = jnp.sqrt(jnp.square(cos) + jnp.square(sin))
    return cos / norm, sin / norm

  def t_from_log_snr(self, lam):  # lambda + 2 log s = 2 log cot(pi t / 2)
    return 2.0 / np.pi * jnp.arctan(jnp.exp(-0.5 * jnp.asarray(lam, jnp.float32)) / self.shift)

  def drift_diffusion(self, t):
    if self.shift != 1.0:
      return super().drift_diffusion(t)
    tan = jnp.tan(0.5 * np.pi * jnp.asarray(t, jnp.float32))
    return -0.5 * np.pi * tan, np.pi * tan
