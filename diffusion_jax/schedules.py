"""Noise schedules: discrete `alphas_cumprod` as published, and their continuous-time view
x_t = alpha_t x_0 + sigma_t eps with t in [0, 1], index i <-> t = (i + 1) / T."""
import inspect
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.config_files import parse_spec
from diffusion_jax.paths import GaussianPath
from diffusion_jax.registry import Registry

SCHEDULES = Registry("schedule")


@flax.struct.dataclass
class Schedule(GaussianPath):
  """A variance-preserving schedule defined by its T cumulative products alpha_bar_i (0-based i)."""
  alphas_cumprod: jnp.ndarray  # [T], float32

  @property
  def num_timesteps(self):
    return self.alphas_cumprod.shape[0]

  @property
  def betas(self):
    prev = jnp.concatenate([jnp.ones((1,)), self.alphas_cumprod[:-1]])
    return 1.0 - self.alphas_cumprod / prev

  def t_to_index(self, t):
    """Continuous t in (0, 1] -> fractional 0-based index i = t T - 1."""
    return t * self.num_timesteps - 1.0

  network_time = t_to_index  # a DDPM network sees the 0-based index

  def sample_t(self, rng, batch):
    """Training times t = (i + 1) / T, i ~ U{0, ..., T - 1} (Ho et al. 2020)."""
    return self.index_to_t(jax.random.randint(rng, (batch,), 0, self.num_timesteps))

  def index_to_t(self, i):
    return (jnp.asarray(i, jnp.float32) + 1.0) / self.num_timesteps

  @property
  def log_snr_grid(self):
    """log(alpha_bar_i / (1 - alpha_bar_i)) at the T grid points."""
    return jnp.log(self.alphas_cumprod) - jnp.log1p(-self.alphas_cumprod)

  def log_snr(self, t):
    """log(alpha_bar / (1 - alpha_bar)), interpolated linearly in log-SNR between grid points;
    exact at t = (i + 1) / T, clamped outside [1/T, 1]."""
    grid = self.log_snr_grid
    i = jnp.clip(self.t_to_index(jnp.asarray(t, jnp.float32)), 0.0, self.num_timesteps - 1.0)
    lo = jnp.floor(i).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, self.num_timesteps - 1)
    frac = i - lo
    # at a grid point the value itself: 0 * (-inf) is NaN at the end of a zero-terminal-SNR schedule
    return jnp.where(frac > 0, (1.0 - frac) * grid[lo] + frac * grid[hi], grid[lo])

  def t_from_log_snr(self, lam):
    """Inverse of log_snr on [1/T, 1] (piecewise linear in log-SNR, clamped at the ends; a log-SNR of -inf, the last
    point of a zero-terminal-SNR schedule, is t = 1)."""
    grid = self.log_snr_grid
    finite = jnp.isfinite(grid)
    t = jnp.interp(-lam, -jnp.where(finite, grid, jnp.min(jnp.where(finite, grid, 0.0)) - 1.0),
                   self.index_to_t(jnp.arange(self.num_timesteps)))
    return jnp.where(jnp.isneginf(lam), 1.0, t)

  def alpha_sigma(self, t):
    """(alpha_t, sigma_t) with alpha_t^2 = sigmoid(log_snr), sigma_t^2 = sigmoid(-log_snr) (VP)."""
    lam = self.log_snr(t)
    return jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))


@flax.struct.dataclass
class PathSchedule(Schedule):
  """The variance-preserving view of a continuous path on T steps (of_path): the discrete samplers' grid from
  alphas_cumprod, the log-SNR and its inverse from the path itself (exact between grid points), floored at
  min_log_snr where the path reaches alpha = 0."""
  path: object = flax.struct.field(pytree_node=False, default=None)
  min_log_snr: float = flax.struct.field(pytree_node=False, default=-27.6)

  def log_snr(self, t):
    return jnp.maximum(self.path.log_snr(t), self.min_log_snr)

  def t_from_log_snr(self, lam):
    return self.path.t_from_log_snr(jnp.maximum(lam, self.min_log_snr))


def of_path(path, T, min_log_snr=-27.6):
  """The variance-preserving view of a continuous path on T steps: alpha_bar_i = sigmoid(lambda((i + 1) / T)), the
  path's log-SNR at t = (i + 1) / T (x_t / sqrt(alpha^2 + sigma^2) has alpha_bar = sigmoid(lambda)), lambda at least
  min_log_snr (alpha_bar >= 1e-12 by default)."""
  t = jnp.asarray((np.arange(T) + 1.0) / T, jnp.float32)
  alpha_bar = jax.nn.sigmoid(jnp.maximum(path.log_snr(t), min_log_snr))
  return PathSchedule(alphas_cumprod=alpha_bar, path=path, min_log_snr=min_log_snr)


def from_betas(betas):
  """The schedule alpha_bar_i = prod_{j <= i} (1 - beta_j) (Ho et al. 2020), accumulated in float64."""
  return Schedule(alphas_cumprod=jnp.asarray(np.cumprod(1.0 - np.asarray(betas, np.float64)), jnp.float32))


def rescale_zero_terminal_snr(schedule):
  """Lin et al. 2024 ("Common diffusion noise schedules and sample steps are flawed"), Alg. 1: sqrt(alpha_bar) shifted
  to 0 at the last step and scaled to keep its first value, so that alpha_bar_T = 0 (SNR 0, pure noise) while
  alpha_bar_1 is unchanged."""
  root = np.sqrt(np.asarray(schedule.alphas_cumprod, np.float64))
  root = (root - root[-1]) * root[0] / (root[0] - root[-1])
  return Schedule(alphas_cumprod=jnp.asarray(root**2, jnp.float32))


def _from_alpha_bar_fn(f, T, max_beta):
  """Betas from a continuous alpha_bar(t): beta_i = min(1 - f((i+1)/T) / f(i/T), max_beta) (Nichol & Dhariwal 2021)."""
  t = np.arange(T + 1, dtype=np.float64) / T
  fs = f(t)
  return from_betas(np.minimum(1.0 - fs[1:] / fs[:-1], max_beta))


@SCHEDULES.register("linear")
def linear(T=1000, beta_start=1e-4, beta_end=0.02):
  """Ho et al. 2020: betas linear from beta_start = 1e-4 to beta_end = 0.02 (T = 1000 in the paper)."""
  return from_betas(np.linspace(beta_start, beta_end, T, dtype=np.float64))


@SCHEDULES.register("scaled_linear")
def scaled_linear(T=1000, beta_start=0.00085, beta_end=0.012):
  """Latent diffusion (Rombach et al. 2022; Stable Diffusion): sqrt(beta) linear from sqrt(0.00085) to sqrt(0.012)."""
  return from_betas(np.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=np.float64) ** 2)


@SCHEDULES.register("cosine")
def cosine(T=1000, s=0.008, max_beta=0.999):
  """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2((t + s) / (1 + s) * pi / 2), betas clipped at 0.999."""
  return _from_alpha_bar_fn(lambda t: np.cos((t + s) / (1 + s) * math.pi / 2) ** 2, T, max_beta)


@SCHEDULES.register("sigmoid")
def sigmoid(T=1000, start=-3.0, end=3.0, tau=1.0, max_beta=0.999):
  """Chen 2023 ("On the importance of noise scheduling"), Alg. 1: alpha_bar(t) from a shifted, scaled sigmoid."""
  sig = lambda z: 1.0 / (1.0 + np.exp(-z))
  v_start, v_end = sig(start / tau), sig(end / tau)
  f = lambda t: np.clip((v_end - sig((t * (end - start) + start) / tau)) / (v_end - v_start), 1e-9, 1.0)
  return _from_alpha_bar_fn(f, T, max_beta)


def cosine_log_snr(t, log_snr_min=-15.0, log_snr_max=15.0):
  """lambda(t) = -2 log tan(t_min + t (t_max - t_min)), t_min = atan(e^{-lambda_max / 2}), t_max =
  atan(e^{-lambda_min / 2}): the cosine schedule's log-SNR, alpha = cos(pi t / 2), within [lambda_min, lambda_max]
  (Hoogeboom et al. 2023, "simple diffusion", Sec. 3)."""
  t_min, t_max = math.atan(math.exp(-0.5 * log_snr_max)), math.atan(math.exp(-0.5 * log_snr_min))
  return -2.0 * np.log(np.tan(t_min + t * (t_max - t_min)))


def from_log_snr(log_snr, T):
  """The schedule alpha_bar_i = sigmoid(lambda((i + 1) / T)) of a log-SNR function of t in [0, 1] (float64)."""
  lam = log_snr(np.arange(1, T + 1, dtype=np.float64) / T)
  return Schedule(alphas_cumprod=jnp.asarray(1.0 / (1.0 + np.exp(-lam)), jnp.float32))


@SCHEDULES.register("shifted_cosine")
def shifted_cosine(T=1000, resolution=64, base=64):
  """Simple diffusion's shifted cosine schedule (Hoogeboom et al. 2023, eq. 4): lambda(t) = cosine_log_snr(t) +
  2 log(base / resolution), so that images of `resolution` pixels per side (the data's, or the latents') see the
  noise of `base`-sized images under the cosine schedule; base = resolution is the cosine log-SNR itself."""
  return from_log_snr(lambda t: cosine_log_snr(t) + 2.0 * math.log(base / resolution), T)


@SCHEDULES.register("interpolated_cosine")
def interpolated_cosine(T=1000, resolution=64, base_low=32, base_high=256):
  """Simple diffusion's interpolated schedule (Hoogeboom et al. 2023, Sec. 3.1): lambda(t) = t lambda_low(t) +
  (1 - t) lambda_high(t), the cosine log-SNR shifted for base_low at the noisy end (t = 1) and for base_high at the
  clean end (t = 0)."""
  shifted = lambda t, base: cosine_log_snr(t) + 2.0 * math.log(base / resolution)
  return from_log_snr(lambda t: t * shifted(t, base_low) + (1.0 - t) * shifted(t, base_high), T)


def schedule_options(name):
  """{option: default} of the schedule `name` (its function's keywords but T)."""
  return {k: p.default for k, p in inspect.signature(SCHEDULES.get(name)).parameters.items() if k != "T"}


def get_schedule(name, num_timesteps, **kwargs):
  """The schedule of a spec name[:key=value...] (e.g. shifted_cosine:base=32), the options parsed as the types of the
  schedule's defaults; `kwargs` (e.g. the data's resolution) go to the schedules that take them."""
  name, given = parse_spec(name, schedule_options, "schedule")
  defaults = schedule_options(name)
  return SCHEDULES.get(name)(num_timesteps, **{**{k: v for k, v in kwargs.items() if k in defaults}, **given})
