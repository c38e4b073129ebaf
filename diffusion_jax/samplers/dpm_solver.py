"""DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): a second-order multistep solver of the probability-flow ODE in the
data-prediction form, on any respaced subset of the training steps; first order on the first and last step."""
import jax.numpy as jnp

from diffusion_jax.samplers.common import eps_x0, grid, initial_noise, model_scan, register_sampler


@register_sampler("dpm_solver++")
def dpm_solver_pp_2m(model_fn, schedule, shape, rng, *, num_steps, y=None, prediction="eps", clip_x0=False,
                     spacing="trailing"):
  ts, abar, abar_next = grid(schedule, num_steps, spacing)
  # ratio_i = e^{-h_i} = (sigma/alpha)_next / (sigma/alpha)_now, h_i = lambda_next - lambda_now (0 at the clean end)
  ratio = jnp.sqrt((1.0 - abar_next) / abar_next) / jnp.sqrt((1.0 - abar) / abar)
  h = -jnp.log(jnp.maximum(ratio, 1e-30))
  h_prev = jnp.concatenate([jnp.ones((1,)), h[:-1]])
  first_order = (jnp.arange(num_steps) == 0) | (abar_next >= 1.0)

  def step(model_fn, carry, xs):
    x, x0_prev = carry
    t, a, a_next, r_ei, hi, hp, first = xs
    _, x0 = eps_x0(model_fn, x, t, a, y, prediction, clip_x0)
    r = hp / hi
    d = jnp.where(first, x0, (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_prev)
    # x_next = (sigma_next / sigma) x - alpha_next (e^{-h} - 1) D
    x_next = jnp.sqrt((1.0 - a_next) / (1.0 - a)) * x - jnp.sqrt(a_next) * (r_ei - 1.0) * d
    return (x_next, x0), None

  x, _ = initial_noise(rng, shape)
  (x, _), _ = model_scan(model_fn, step, (x, jnp.zeros(shape)), (ts, abar, abar_next, ratio, h, h_prev, first_order),
                         shape)
  return x
