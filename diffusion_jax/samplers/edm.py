"""The EDM sampler (Karras et al. 2022, Alg. 2): Heun's method on the probability-flow ODE in sigma = sigma_t /
alpha_t, with rho = 7 time steps and optional stochastic churn; a VP-trained model is wrapped as a denoiser
D(x; sigma)."""
import jax
import jax.numpy as jnp

from diffusion_jax.parametrization import to_eps_x0
from diffusion_jax.samplers.common import initial_noise, model_scan, register_sampler


def karras_sigmas(sigma_min, sigma_max, n, rho=7.0):
  """sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, then sigma_n = 0."""
  ramp = jnp.linspace(0.0, 1.0, n)
  s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
  return jnp.concatenate([s, jnp.zeros((1,))])


@register_sampler("edm", nfe=lambda num_steps, options: 2 * num_steps - 1,
                  stochastic=lambda options: options.get("s_churn", 0.0) > 0)
def edm_sample(model_fn, schedule, shape, rng, *, num_steps, y=None, prediction="eps", clip_x0=False, rho=7.0,
               s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, sigma_max=float("inf")):
  """num_steps sigma levels from the schedule's noisiest, or sigma_max if lower (e.g. Karras et al.'s 80 for a path
  whose alpha reaches 0), to its cleanest: 2 num_steps - 1 network evaluations. From a zero-terminal-SNR schedule
  (sigma = inf at its last step) it starts at the level before."""
  T = schedule.num_timesteps
  lam = schedule.log_snr(jnp.array([1.0 / T, 1.0, 1.0 - 1.0 / T]))
  noisiest = jnp.where(jnp.isfinite(lam[1]), lam[1], lam[2])  # SNR 0 (zero terminal SNR): the step before it
  sigmas = karras_sigmas(jnp.exp(-lam[0] / 2), jnp.minimum(jnp.exp(-noisiest / 2), sigma_max), num_steps, rho)

  def denoise(model_fn, x, sigma):  # D(x; sigma) of x = x0 + sigma n, by the VP model at alpha = 1 / sqrt(1 + sigma^2)
    alpha = 1.0 / jnp.sqrt(1.0 + sigma**2)
    t = jnp.full((shape[0],), schedule.t_from_log_snr(-2.0 * jnp.log(sigma)))
    _, x0 = to_eps_x0(model_fn(alpha * x, t, y), alpha * x, alpha, alpha * sigma, prediction)
    return jnp.clip(x0, -1.0, 1.0) if clip_x0 else x0

  def step(model_fn, x, xs):
    sigma, sigma_next, key = xs
    gamma = jnp.where((sigma >= s_tmin) & (sigma <= s_tmax), jnp.minimum(s_churn / num_steps, jnp.sqrt(2.0) - 1), 0.0)
    sigma_hat = sigma * (1 + gamma)
    x_hat = x + jnp.sqrt(sigma_hat**2 - sigma**2) * s_noise * jax.random.normal(key, shape)
    d = (x_hat - denoise(model_fn, x_hat, sigma_hat)) / sigma_hat
    x_next = x_hat + (sigma_next - sigma_hat) * d
    safe = jnp.maximum(sigma_next, 1e-12)
    d2 = (x_next - denoise(model_fn, x_next, safe)) / safe
    heun = x_hat + (sigma_next - sigma_hat) * 0.5 * (d + d2)
    return jnp.where(sigma_next > 0, heun, x_next), None

  x, k = initial_noise(rng, shape)
  x = x * sigmas[0]
  x, _ = model_scan(model_fn, step, x, (sigmas[:-1], sigmas[1:], jax.random.split(k, num_steps)), shape)
  return x
