"""SDE-DPM-Solver++ (Lu et al. 2022, "DPM-Solver++", Sec. 5 and App. B; diffusers' `sde-dpmsolver++`): the multistep
data-prediction solver of the reverse SDE, of order 1 or 2 (2M, midpoint form), on any respaced subset of the training
steps; first order on the first and last step. Each step adds fresh Gaussian noise."""
import jax
import jax.numpy as jnp

from diffusion_jax.samplers.common import eps_x0, grid, initial_noise, model_scan, register_sampler
from diffusion_jax.samplers.dpm_solver import check_order, log_snr_steps, step_orders


@register_sampler("sde_dpm_solver++", stochastic=lambda options: True)
def sde_dpm_solver_pp(model_fn, schedule, shape, rng, *, num_steps, y=None, prediction="eps", clip_x0=False,
                      spacing="trailing", order=2):
  """x_next = (sigma_next / sigma) e^{-h} x + alpha_next (1 - e^{-2h}) (D0 + D1 / 2)
  + sigma_next sqrt(1 - e^{-2h}) z, z ~ N(0, I), with D1 = (x0 - x0_prev) / r as in the ODE solver."""
  check_order(order, (1, 2), "SDE-DPM-Solver++")
  ts, abar, abar_next = grid(schedule, num_steps, spacing)
  ratio, h, h_1, _ = log_snr_steps(abar, abar_next)
  orders = jnp.asarray(step_orders(num_steps, order))

  def step(model_fn, carry, xs):
    x, x0_prev = carry
    t, a, a_next, e_h, hi, hi_1, k, key = xs
    _, x0 = eps_x0(model_fn, x, t, a, y, prediction, clip_x0)
    d = jnp.where(k == 2, x0 + 0.5 * (x0 - x0_prev) * hi / hi_1, x0)
    sigma_next = jnp.sqrt(1.0 - a_next)
    x_next = (sigma_next / jnp.sqrt(1.0 - a) * e_h) * x + jnp.sqrt(a_next) * (1.0 - e_h**2) * d
    x_next = x_next + sigma_next * jnp.sqrt(1.0 - e_h**2) * jax.random.normal(key, shape)
    return (x_next, x0), None

  x, k = initial_noise(rng, shape)
  keys = jax.random.split(k, num_steps)
  (x, _), _ = model_scan(model_fn, step, (x, jnp.zeros(shape)), (ts, abar, abar_next, ratio, h, h_1, orders, keys),
                         shape)
  return x
