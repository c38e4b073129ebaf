"""Predictor-corrector sampling of score SDEs (Song et al. 2021, Alg. 1-3): a predictor step of the reverse SDE,
then Langevin corrector steps, from t = 1 down to t = eps; the whole loop is one lax.scan."""
import jax
import jax.numpy as jnp

from diffusion_jax.registry import Registry
from diffusion_jax.samplers.common import register_sampler
from diffusion_jax.parametrization import bcast
from diffusion_jax.sde import SDE, VESDE, VPSDE, LinearBetaSDE, default_eps, score_fn

PREDICTORS = Registry("predictor")
CORRECTORS = Registry("corrector")


@PREDICTORS.register("euler_maruyama")
def euler_maruyama(sde, score, x, t, dt, z):
  drift, g = sde.reverse(score).sde(x, t)
  x_mean = x + drift * dt
  return x_mean + bcast(g, x) * jnp.sqrt(-dt) * z, x_mean


@PREDICTORS.register("reverse_diffusion")
def reverse_diffusion(sde, score, x, t, dt, z):
  """The reverse of the SDE's own discretisation (Song et al. 2021, eq. 46)."""
  f, g = sde.reverse(score).discretize(x, t)
  x_mean = x - f
  return x_mean + bcast(g, x) * z, x_mean


@PREDICTORS.register("ancestral")
def ancestral(sde, score, x, t, dt, z):
  """Ancestral sampling of the DDPM (VP) or SMLD (VE) discretisation (Song et al. 2021, eqs. 47 and 48)."""
  if isinstance(sde, VESDE):
    sigma, adjacent = sde.sigma_and_previous(t)
    x_mean = x + bcast(sigma**2 - adjacent**2, x) * score(x, t)
    std = jnp.sqrt(adjacent**2 * (sigma**2 - adjacent**2) / sigma**2)
    return x_mean + bcast(std, x) * z, x_mean
  if isinstance(sde, VPSDE):
    beta = sde.discrete_betas[sde.index(t)]
    x_mean = (x + bcast(beta, x) * score(x, t)) / bcast(jnp.sqrt(1.0 - beta), x)
    return x_mean + bcast(jnp.sqrt(beta), x) * z, x_mean
  raise ValueError(f"The ancestral predictor supports the VP and VE SDEs, not {type(sde).__name__}")


@PREDICTORS.register("none")
def no_predictor(sde, score, x, t, dt, z):
  return x, x


@CORRECTORS.register("langevin")
def langevin(sde, score, x, t, rng, snr, n_steps):
  """Annealed Langevin dynamics with step size 2 alpha (snr ||z|| / ||score||)^2 (Song et al. 2021, Alg. 4)."""
  alpha = sde.alphas[sde.index(t)] if isinstance(sde, LinearBetaSDE) else jnp.ones_like(t)
  norm = lambda a: jnp.mean(jnp.sqrt(jnp.sum(a.reshape(a.shape[0], -1) ** 2, axis=-1)))
  x_mean = x
  for key in jax.random.split(rng, n_steps):
    grad = score(x, t)
    z = jax.random.normal(key, x.shape)
    step = (snr * norm(z) / norm(grad)) ** 2 * 2.0 * alpha
    x_mean = x + bcast(step, x) * grad
    x = x_mean + bcast(jnp.sqrt(2.0 * step), x) * z
  return x, x_mean


@CORRECTORS.register("none")
def no_corrector(sde, score, x, t, rng, snr, n_steps):
  return x, x


def pc_nfe(num_steps, options):
  """num_steps predictor evaluations, plus n_corrector_steps corrector evaluations before each."""
  corrector_steps = options.get("n_corrector_steps", 1) if options.get("corrector", "langevin") != "none" else 0
  return num_steps * (1 + corrector_steps)


def check_stochastic(sde, eps, points=257):
  """Raises where the path's g(t)^2 = -sigma^2 d lambda / dt is negative somewhere in [eps, t_max] (its log-SNR rises
  with t): no diffusion has those marginals, so no stochastic sampler can run on it."""
  with jax.ensure_compile_time_eval():  # constants, also inside a jitted sampler
    t = jnp.linspace(eps, sde.t_max, points)
    g2 = sde.drift_diffusion(t)[1]
    bad = t[g2 < 0]
  if bad.size:
    raise ValueError(f"The pc sampler needs a stochastic SDE, but this path's g(t)^2 = -sigma^2 dlambda/dt is negative "
                     f"for t in [{float(bad.min()):.3g}, {float(bad.max()):.3g}] (its log-SNR rises there): use ode, "
                     "flow or a discrete sampler")


@register_sampler("pc", process="sde", nfe=pc_nfe, stochastic=lambda options: True)
def pc_sample(model_fn, sde, shape, rng, *, num_steps, y=None, prediction="eps", predictor="reverse_diffusion",
              corrector="langevin", snr=0.16, n_corrector_steps=1, denoise=True, eps=None):
  """num_steps predictor steps from t = 1 to eps, each after n_corrector_steps Langevin steps; the reverse-diffusion
  and ancestral predictors and the corrector use the SDE discretised into num_steps steps (score_sde's sde.N).
  Returns x_0; with `denoise` the last step returns the predictor's mean (no noise), as Song et al. do."""
  if not isinstance(sde, SDE):
    raise ValueError(f"The pc sampler needs an SDE (vp, subvp, ve), got {type(sde).__name__}")
  eps = default_eps(sde) if eps is None else eps
  check_stochastic(sde, eps)
  predict, correct = PREDICTORS.get(predictor), CORRECTORS.get(corrector)
  uses_discretisation = predictor in ("reverse_diffusion", "ancestral") or corrector == "langevin"
  if isinstance(sde, LinearBetaSDE) and uses_discretisation and sde.beta_1 / num_steps >= 1:
    raise ValueError(f"predictor={predictor!r} / corrector={corrector!r} use the DDPM discretisation beta_i = "
                     f"beta(t_i) / N, which needs num_steps > beta_max = {sde.beta_1:g} (got {num_steps}); "
                     "use predictor='euler_maruyama', corrector='none' for fewer steps")
  sde = sde.with_steps(num_steps)
  score = score_fn(model_fn, sde, y, prediction)
  k0, k = jax.random.split(rng)
  x = sde.prior_sampling(k0, shape)
  ts = jnp.linspace(sde.t_max, eps, num_steps)
  dt = -(sde.t_max - eps) / num_steps

  def step(carry, xs):
    x, _ = carry
    t, key = xs
    k_c, k_p = jax.random.split(key)
    tb = jnp.full((shape[0],), t)
    x, _ = correct(sde, score, x, tb, k_c, snr, n_corrector_steps)
    x, x_mean = predict(sde, score, x, tb, dt, jax.random.normal(k_p, shape))
    return (x, x_mean), None

  (x, x_mean), _ = jax.lax.scan(step, (x, x), (ts, jax.random.split(k, num_steps)))
  return x_mean if denoise else x
