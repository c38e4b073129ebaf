"""Score SDEs of Song et al. (2021): VP, sub-VP and VE, Gaussian paths (paths.py) with their forward SDEs in closed
form, the discretisation used by the reverse-diffusion / ancestral predictors, and the reverse SDE / probability-flow
ODE."""
import abc

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.parametrization import bcast, eps_x0_on
from diffusion_jax.config_files import parse_spec
from diffusion_jax.paths import CosineInterpolant, GaussianPath, RectifiedFlow, VarianceExploding, resolution_shift
from diffusion_jax.registry import Registry
from diffusion_jax.schedules import from_betas


class SDE(GaussianPath, abc.ABC):
  """dx = f(x, t) dt + g(t) dw on t in [0, T=1] with Gaussian marginals (alpha_sigma), discretised into N steps."""

  def __init__(self, N):
    self.N = N

  @abc.abstractmethod
  def with_steps(self, N):
    """The same SDE discretised into N steps (the discretisation-based predictors and correctors take N steps)."""

  @abc.abstractmethod
  def network_time(self, t):
    """The time input of a network trained on this SDE (score_sde's convention)."""

  t_min = 1e-5  # the smallest training time (Song et al. 2021)
  t_max = 1.0  # where the pc and ode samplers start, from the prior

  def sample_t(self, rng, batch):
    """Training times t ~ U(t_min, 1) (continuous-time training, Song et al. 2021)."""
    return jax.random.uniform(rng, (batch,), minval=self.t_min, maxval=1.0)

  def discretize(self, x, t):
    """Euler-Maruyama discretisation x_{i+1} = x_i + f_i + G_i z with dt = 1/N (subclasses override with the
    DDPM / SMLD discretisations)."""
    drift, g = self.sde(x, t)
    return drift / self.N, g * jnp.sqrt(1.0 / self.N)

  def reverse(self, score_fn, probability_flow=False):
    """The reverse-time SDE dx = [f - g^2 score] dt + g dw_bar, or with probability_flow the ODE
    dx = [f - 1/2 g^2 score] dt (Song et al. 2021, eqs. 6 and 13)."""
    fwd = self
    w = 0.5 if probability_flow else 1.0

    class ReverseSDE:
      N = fwd.N

      def sde(self, x, t):
        drift, g = fwd.sde(x, t)
        drift = drift - bcast(g**2, x) * score_fn(x, t) * w
        return drift, jnp.zeros_like(g) if probability_flow else g

      def discretize(self, x, t):
        f, G = fwd.discretize(x, t)
        rev_f = f - bcast(G**2, x) * score_fn(x, t) * w
        return rev_f, jnp.zeros_like(G) if probability_flow else G

    return ReverseSDE()


class LinearBetaSDE(SDE):
  """What the VP and sub-VP SDEs share: the noise rate beta(t) = beta_min + t (beta_max - beta_min), its DDPM
  discretisation beta_i = beta(t_i) / N (Ho et al.: 1e-4 ... 0.02 for N = 1000; the Langevin corrector's step size
  uses its alphas), log alpha_t = -1/2 int_0^t beta(s) ds, the prior N(0, I) (as score_sde's, though sigma(1) is
  slightly below 1) and score_sde's network time (N - 1) t."""

  def __init__(self, beta_min=0.1, beta_max=20.0, N=1000):
    super().__init__(N)
    self.beta_0, self.beta_1 = beta_min, beta_max
    self.discrete_betas = jnp.asarray(np.linspace(beta_min / N, beta_max / N, N), jnp.float32)
    self.alphas = 1.0 - self.discrete_betas

  def beta(self, t):
    return self.beta_0 + t * (self.beta_1 - self.beta_0)

  def with_steps(self, N):
    return type(self)(self.beta_0, self.beta_1, N)

  def network_time(self, t):
    return (self.N - 1) * t

  def log_mean_coeff(self, t):
    return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

  def prior_sampling(self, rng, shape):
    return jax.random.normal(rng, shape)

  def prior_logp(self, z):
    n = np.prod(z.shape[1:])
    return -0.5 * n * np.log(2 * np.pi) - 0.5 * jnp.sum(z**2, axis=tuple(range(1, z.ndim)))

  def index(self, t):
    return jnp.clip(jnp.round(t * (self.N - 1)).astype(jnp.int32), 0, self.N - 1)


class VPSDE(LinearBetaSDE):
  """Variance preserving: dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw; its N-step discretisation is DDPM."""

  def sde(self, x, t):
    beta_t = self.beta(t)
    return -0.5 * bcast(beta_t, x) * x, jnp.sqrt(beta_t)

  def discrete_schedule(self):
    """The DDPM schedule of this SDE's discretisation (alpha_bar_i = prod_j (1 - beta_j)), for the discrete samplers."""
    return from_betas(self.discrete_betas)

  def alpha_sigma(self, t):
    lmc = self.log_mean_coeff(t)
    return jnp.exp(lmc), jnp.sqrt(1.0 - jnp.exp(2.0 * lmc))

  def discretize(self, x, t):
    """DDPM: x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z."""
    i = self.index(t)
    beta, alpha = self.discrete_betas[i], self.alphas[i]
    return bcast(jnp.sqrt(alpha), x) * x - x, jnp.sqrt(beta)


class SubVPSDE(LinearBetaSDE):
  """sub-VP: the VP drift with diffusion sqrt(beta(t) (1 - exp(-2 int_0^t beta(s) ds))); its marginal variance is
  (1 - exp(int ... ))^2, always below the VP one. Its discretisation is Euler-Maruyama's (SDE.discretize), as in
  score_sde."""

  def sde(self, x, t):
    discount = 1.0 - jnp.exp(-2.0 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t**2)
    return -0.5 * bcast(self.beta(t), x) * x, jnp.sqrt(self.beta(t) * discount)

  def alpha_sigma(self, t):
    lmc = self.log_mean_coeff(t)
    return jnp.exp(lmc), 1.0 - jnp.exp(2.0 * lmc)


class VESDE(SDE, VarianceExploding):
  """Variance exploding: dx = sqrt(d sigma^2(t) / dt) dw, sigma(t) = sigma_min (sigma_max / sigma_min)^t;
  its N-step discretisation is SMLD / NCSN (Song & Ermon 2019)."""

  def __init__(self, sigma_min=0.01, sigma_max=50.0, N=1000):
    SDE.__init__(self, N)
    VarianceExploding.__init__(self, sigma_min, sigma_max)
    self.discrete_sigmas = jnp.asarray(np.exp(np.linspace(np.log(sigma_min), np.log(sigma_max), N)), jnp.float32)

  def with_steps(self, N):
    return type(self)(self.sigma_min, self.sigma_max, N)

  def network_time(self, t):
    return self.sigma(t)

  def index(self, t):
    return jnp.clip(jnp.round(t * (self.N - 1)).astype(jnp.int32), 0, self.N - 1)

  def sigma_and_previous(self, t):
    """(sigma_i, sigma_{i-1}) of the discretisation at t, with sigma_{-1} = 0."""
    i = self.index(t)
    return self.discrete_sigmas[i], jnp.where(i == 0, 0.0, self.discrete_sigmas[jnp.maximum(i - 1, 0)])

  def discretize(self, x, t):
    """SMLD: x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z."""
    sigma, adjacent = self.sigma_and_previous(t)
    return jnp.zeros_like(x), jnp.sqrt(sigma**2 - adjacent**2)


class EDMSDE(VESDE):
  """The VE path over Karras et al. 2022's noise levels, sigma from 0.002 to 80; its network takes sigma (through
  models.precondition.EDMPrecond, as EDM's)."""

  def __init__(self, sigma_min=0.002, sigma_max=80.0, N=1000):
    super().__init__(sigma_min, sigma_max, N)


class InterpolantSDE(SDE):
  """What the interpolant paths (alpha(1) = 0) share as SDEs: N steps, score_sde's network time (N - 1) t, samplers
  that start at t_max = 1 - 1e-3, short of t = 1 where f and g are singular, and the resolution shift s of the
  path's log-SNR (lambda(t) - 2 log s; paths.RectifiedFlow)."""
  t_max = 1.0 - 1e-3

  def __init__(self, N=1000, shift=1.0):
    super().__init__(N)
    if not shift > 0:
      raise ValueError(f"A path's shift must be > 0, got {shift}")
    self.shift = float(shift)

  def with_steps(self, N):
    return type(self)(N, self.shift)

  def network_time(self, t):
    return (self.N - 1) * t


class RectifiedFlowSDE(InterpolantSDE, RectifiedFlow):
  """The rectified-flow path alpha = 1 - t, sigma = t (paths.RectifiedFlow) as an SDE."""


class CosineInterpolantSDE(InterpolantSDE, CosineInterpolant):
  """The cosine interpolant alpha = cos(pi t / 2), sigma = sin(pi t / 2) (paths.CosineInterpolant) as an SDE."""


SDES = Registry("SDE")
SDES.register("vp")(VPSDE)
SDES.register("subvp")(SubVPSDE)
SDES.register("ve")(VESDE)
SDES.register("edm")(EDMSDE)
SDES.register("rectified_flow")(RectifiedFlowSDE)
SDES.register("cosine_interpolant")(CosineInterpolantSDE)


def get_sde(name, **kwargs):
  return SDES.get(name)(**kwargs)


PATH_OPTIONS = {"shift": 1.0, "base": 0}  # the options of the interpolant paths' specs


def sde_from_config(d, spec=None, resolution=None):
  """The SDE of `spec` (default d.sde) with the parameters of a `config.diffusion` block and N = d.num_timesteps. The
  interpolant paths take options, name[:shift=s][:base=b]: a shift s of the log-SNR by -2 log s, or SD3's shift
  s = resolution / base for images of `resolution` pixels per side (the data's, or the latents') against `base`
  (Esser et al. 2024, Sec. 5.3.2; rectified_flow:base=32 on 64-pixel images is shift 2)."""
  name, options = parse_spec(spec or d.sde, lambda n: PATH_OPTIONS if issubclass(SDES.get(n), InterpolantSDE) else {},
                             "path")
  if options.get("base"):
    if "shift" in options:
      raise ValueError(f"diffusion.sde={spec or d.sde!r} sets both shift= and base=; give one")
    if not resolution:
      raise ValueError(f"diffusion.sde={spec or d.sde!r}: base= needs the images' resolution")
    options = {"shift": resolution_shift(resolution**2, options["base"]**2)}
  kw = {"ve": dict(sigma_min=d.sigma_min, sigma_max=d.sigma_max), "vp": dict(beta_min=d.beta_min, beta_max=d.beta_max),
        "subvp": dict(beta_min=d.beta_min, beta_max=d.beta_max)}.get(name, options)
  return get_sde(name, N=d.num_timesteps, **kw)


def on_sde(model_fn, schedule, sde):
  """A model trained on a discrete schedule, queried at SDE time t: at the schedule time of equal log-SNR, so its
  eps prediction is for the noise level the SDE has at t (the usual t <-> index map when they are the same process)."""
  return lambda x, t, y=None: model_fn(x, schedule.t_from_log_snr(sde.log_snr(t)), y)


def default_eps(sde):
  """Smallest sampling time of Song et al. (2021): 1e-5 for VE, 1e-3 for VP and sub-VP."""
  return 1e-5 if isinstance(sde, VESDE) else 1e-3


def score_fn(model_fn, sde, y=None, prediction="eps"):
  """score(x, t) = -eps_hat / sigma_t (Song et al. 2021), from any prediction type, with sigma_t from the SDE."""
  def score(x, t):
    eps, _ = eps_x0_on(sde, model_fn(x, t, y), x, t, prediction)
    return -eps / bcast(sde.alpha_sigma(t)[1], x)
  return score
