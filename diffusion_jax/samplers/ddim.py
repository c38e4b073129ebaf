"""DDIM (Song et al. 2020) with stochasticity eta, on any respaced subset of the training steps."""
import jax
import jax.numpy as jnp

from diffusion_jax.samplers.common import eps_x0, register_sampler, scan_sampler


def ddim_step(x0, eps, abar, abar_prev, z, eta=0.0):
  """Song et al. 2020, eq. 12: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps + s z,
  s = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev)."""
  s = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar)) * jnp.sqrt(1.0 - abar / abar_prev)
  return jnp.sqrt(abar_prev) * x0 + jnp.sqrt(jnp.maximum(1.0 - abar_prev - s**2, 0.0)) * eps + s * z


@register_sampler("ddim", stochastic=lambda options: options.get("eta", 0.0) > 0)
def ddim_sample(model_fn, schedule, shape, rng, *, num_steps, y=None, prediction="eps", clip_x0=False,
                spacing="leading", eta=0.0):
  if eta < 0:
    raise ValueError(f"DDIM eta must be >= 0, got {eta}")

  def step(model_fn, x, xs):
    t, abar, abar_prev, key = xs
    eps, x0 = eps_x0(model_fn, x, t, abar, y, prediction, clip_x0)
    z = jax.random.normal(key, x.shape) if eta else 0.0  # deterministic DDIM draws no noise
    return ddim_step(x0, eps, abar, abar_prev, z, eta)
  return scan_sampler(model_fn, step, schedule, shape, rng, num_steps, spacing)
