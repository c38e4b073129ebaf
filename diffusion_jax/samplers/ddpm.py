"""DDPM ancestral sampling (Ho et al. 2020, Alg. 2) on any respaced subset of the training steps."""
import jax
import jax.numpy as jnp

from diffusion_jax.samplers.common import SAMPLERS, eps_x0, scan_sampler

VARIANCES = ("beta", "beta_tilde")


def ddpm_step(x, x0, abar, abar_prev, z, variance="beta_tilde"):
  """x_{t-1} = mu~(x_t, x0_hat) + sigma_t z with beta_t = 1 - abar_t / abar_prev (respacing, Nichol & Dhariwal 2021)
  and sigma_t^2 = beta_t or beta~_t = (1 - abar_prev) / (1 - abar_t) beta_t (Ho et al., sec. 3.2); no noise at the end.
  mu~ = sqrt(abar_prev) beta_t / (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t) x_t (Ho et al., eq. 7)."""
  if variance not in VARIANCES:
    raise ValueError(f"Unknown DDPM variance {variance!r}; valid: {', '.join(VARIANCES)}")
  beta = 1.0 - abar / abar_prev
  mean = (jnp.sqrt(abar_prev) * beta * x0 + jnp.sqrt(1.0 - beta) * (1.0 - abar_prev) * x) / (1.0 - abar)
  var = beta if variance == "beta" else beta * (1.0 - abar_prev) / (1.0 - abar)
  return mean + jnp.where(abar_prev < 1.0, jnp.sqrt(var), 0.0) * z


@SAMPLERS.register("ddpm")
def ddpm_sample(model_fn, schedule, shape, rng, *, num_steps, y=None, prediction="eps", clip_x0=False,
                spacing="leading", variance="beta_tilde"):
  def step(x, xs):
    t, abar, abar_prev, key = xs
    _, x0 = eps_x0(model_fn, x, t, abar, y, prediction, clip_x0)
    return ddpm_step(x, x0, abar, abar_prev, jax.random.normal(key, x.shape), variance)
  return scan_sampler(step, schedule, shape, rng, num_steps, spacing)
