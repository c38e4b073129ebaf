"""DDPM ancestral sampling (Ho et al. 2020, Alg. 2) on any respaced subset of the training steps."""
import jax
import jax.numpy as jnp

from diffusion_jax.samplers.common import eps_x0, register_sampler, scan_sampler

VARIANCES = ("beta", "beta_tilde")


def ddpm_step(x, x0, abar, abar_prev, z, variance="beta_tilde", shift=None):
  """x_{t-1} = mu~(x_t, x0_hat) + sigma_t z with beta_t = 1 - abar_t / abar_prev (respacing, Nichol & Dhariwal 2021)
  and sigma_t^2 = beta_t or beta~_t = (1 - abar_prev) / (1 - abar_t) beta_t (Ho et al., sec. 3.2); no noise at the end.
  mu~ = sqrt(abar_prev) beta_t / (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t) x_t (Ho et al., eq. 7).
  With `shift` (s grad log p(y | x_t)) the mean moves by sigma_t^2 shift (classifier guidance, Dhariwal & Nichol
  Alg. 1)."""
  if variance not in VARIANCES:
    raise ValueError(f"Unknown DDPM variance {variance!r}; valid: {', '.join(VARIANCES)}")
  beta = 1.0 - abar / abar_prev
  mean = (jnp.sqrt(abar_prev) * beta * x0 + jnp.sqrt(1.0 - beta) * (1.0 - abar_prev) * x) / (1.0 - abar)
  var = jnp.where(abar_prev < 1.0, beta if variance == "beta" else beta * (1.0 - abar_prev) / (1.0 - abar), 0.0)
  if shift is not None:
    mean = mean + var * shift
  return mean + jnp.sqrt(var) * z


@register_sampler("ddpm", mean_shift_guidance=True, stochastic=lambda options: True)
def ddpm_sample(model_fn, schedule, shape, rng, *, num_steps, y=None, prediction="eps", clip_x0=False,
                spacing="leading", variance="beta_tilde", classifier_grad=None):
  """classifier_grad(x, t, y) -> s grad log p(y | x_t): classifier guidance by the mean shift of Dhariwal & Nichol."""
  def step(model_fn, x, xs):
    t, abar, abar_prev, key = xs
    _, x0 = eps_x0(model_fn, x, t, abar, y, prediction, clip_x0)
    shift = None if classifier_grad is None else classifier_grad(x, jnp.full((x.shape[0],), t), y)
    return ddpm_step(x, x0, abar, abar_prev, jax.random.normal(key, x.shape), variance, shift)
  return scan_sampler(model_fn, step, schedule, shape, rng, num_steps, spacing)
