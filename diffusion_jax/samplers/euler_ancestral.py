"""Euler ancestral (k-diffusion's sample_euler_ancestral; diffusers' EulerAncestralDiscreteScheduler): Euler steps of
the probability-flow ODE in sigma = sigma_t / alpha_t down to sigma_down, then fresh noise of standard deviation
sigma_up, so that each step lands on the noise level sigma_next (Karras et al. 2022's ancestral sampling, eta = 1);
on any respaced subset of the training steps. A VP model is queried at x / sqrt(1 + sigma^2)."""
import jax
import jax.numpy as jnp

from diffusion_jax.parametrization import to_eps_x0
from diffusion_jax.samplers.common import grid, initial_noise, model_scan, register_sampler


def ancestral_step(sigma, sigma_next, eta=1.0):
  """(sigma_down, sigma_up) with sigma_down^2 + sigma_up^2 = sigma_next^2, sigma_up = min(sigma_next,
  eta sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)) (k-diffusion's get_ancestral_step), written as
  eta sigma_next sqrt(1 - (sigma_next / sigma)^2) and with sigma_down^2 >= 0, so that sigma ~ 1e15 (a zero-terminal-SNR
  schedule's first step) cannot round it below 0."""
  sigma_up = jnp.minimum(sigma_next, eta * sigma_next * jnp.sqrt(jnp.maximum(1.0 - (sigma_next / sigma) ** 2, 0.0)))
  return jnp.sqrt(jnp.maximum(sigma_next**2 - sigma_up**2, 0.0)), sigma_up


@register_sampler("euler_ancestral", stochastic=lambda options: options.get("eta", 1.0) > 0)
def euler_ancestral(model_fn, schedule, shape, rng, *, num_steps, y=None, prediction="eps", clip_x0=False,
                    spacing="leading", eta=1.0, s_noise=1.0):
  """x <- x + (sigma_down - sigma) (x - D(x; sigma)) / sigma + s_noise sigma_up z from sigma_T to 0, starting at
  x = sqrt(1 + sigma_T^2) x_T (the VP sampler's x_T); eta = 0 is the deterministic Euler sampler. Carried as the VP
  x / sqrt(1 + sigma^2) and computed as D + sigma_down (x - D) / sigma, which stays finite as sigma -> inf (a
  zero-terminal-SNR schedule's first step)."""
  if eta < 0:
    raise ValueError(f"Euler ancestral's eta must be >= 0, got {eta}")
  ts, abar, abar_next = grid(schedule, num_steps, spacing)
  sigmas, sigmas_next = jnp.sqrt((1.0 - abar) / abar), jnp.sqrt((1.0 - abar_next) / abar_next)

  def step(model_fn, x, xs):  # x: the VP x_t
    t, sigma, sigma_next, key = xs
    alpha = 1.0 / jnp.sqrt(1.0 + sigma**2)
    _, x0 = to_eps_x0(model_fn(x, jnp.full((shape[0],), t), y), x, alpha, alpha * sigma, prediction)
    x0 = jnp.clip(x0, -1.0, 1.0) if clip_x0 else x0
    sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
    direction = x * jnp.sqrt(1.0 + 1.0 / sigma**2) - x0 / sigma  # (x_ve - D) / sigma, x_ve = x / alpha
    x_next = x0 + sigma_down * direction + s_noise * sigma_up * jax.random.normal(key, shape)
    return x_next / jnp.sqrt(1.0 + sigma_next**2), None

  x, k = initial_noise(rng, shape)
  x, _ = model_scan(model_fn, step, x, (ts, sigmas, sigmas_next, jax.random.split(k, num_steps)), shape)
  return x
