"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast solver for guided sampling of diffusion probabilistic models"):
multistep solvers of the probability-flow ODE in the data-prediction form, of order 1, 2 (2M, Alg. 2) or 3 (3M), on any
respaced subset of the training steps. Each step extrapolates the x0 predictions of the last steps in lambda = log
alpha - log sigma; the first steps, which lack the history, and the last step (to sigma = 0) are of lower order, and
with fewer than 15 steps so is the one before the last, as diffusers' DPMSolverMultistepScheduler
(lower_order_final)."""
import jax.numpy as jnp
import numpy as np

from diffusion_jax.samplers.common import eps_x0, grid, initial_noise, model_scan, register_sampler

ORDERS = (1, 2, 3)


def check_order(order, valid=ORDERS, name="DPM-Solver++"):
  if order not in valid:
    raise ValueError(f"{name} has no order {order}; valid orders: {', '.join(map(str, valid))}")


def step_orders(num_steps, order, lower_order_final=True):
  """The order of each step: min(order, steps done + 1) (the history it has), 1 at the last step (to sigma = 0), and
  with lower_order_final and fewer than 15 steps at most 2 at the one before (diffusers' rules)."""
  orders = np.minimum(order, np.arange(num_steps) + 1)
  if lower_order_final and num_steps < 15 and num_steps >= 2:
    orders[-2] = min(orders[-2], 2)
  orders[-1] = 1
  return orders


def log_snr_steps(abar, abar_next):
  """Per step: e^{-h} = (sigma / alpha)_next / (sigma / alpha)_now and h = lambda_next - lambda_now, h kept finite at
  the clean end (sigma_next = 0, where e^{-h} = 0); h_1, h_2 of the steps before (1 where there is none)."""
  ratio = jnp.sqrt((1.0 - abar_next) / abar_next) / jnp.sqrt((1.0 - abar) / abar)
  h = -jnp.log(jnp.maximum(ratio, 1e-30))
  h_1 = jnp.concatenate([jnp.ones((1,)), h[:-1]])
  h_2 = jnp.concatenate([jnp.ones((1,)), h_1[:-1]])
  return ratio, h, h_1, h_2


def multistep_derivatives(x0, x0_1, x0_2, h, h_1, h_2, order):
  """(D0, D1, D2) of Lu et al.'s multistep updates from the x0 predictions of this step and the two before:
  D1 = (x0 - x0_1) / r0 (order 2), and for order 3 D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1) /
  (r0 + r1) with r0 = h_1 / h, r1 = h_2 / h (diffusers' multistep_dpm_solver_third_order_update); zero above the
  step's order."""
  r0, r1 = h_1 / h, h_2 / h
  d1_0, d1_1 = (x0 - x0_1) / r0, (x0_1 - x0_2) / r1
  d1 = jnp.where(order == 3, d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1), jnp.where(order == 2, d1_0, 0.0))
  d2 = jnp.where(order == 3, (d1_0 - d1_1) / (r0 + r1), 0.0)
  return x0, d1, d2


@register_sampler("dpm_solver++")
def dpm_solver_pp(model_fn, schedule, shape, rng, *, num_steps, y=None, prediction="eps", clip_x0=False,
                  spacing="trailing", order=2, lower_order_final=True):
  """x_next = (sigma_next / sigma) x - alpha_next (e^{-h} - 1) D0 + alpha_next ((e^{-h} - 1) / h + 1) D1
  - alpha_next ((e^{-h} - 1 + h) / h^2 - 1/2) D2 (Lu et al. 2022, eq. 7 and App. B); order 2 takes the midpoint
  form, - alpha_next (e^{-h} - 1) (D0 + D1 / 2) (their Alg. 2)."""
  check_order(order)
  ts, abar, abar_next = grid(schedule, num_steps, spacing)
  ratio, h, h_1, h_2 = log_snr_steps(abar, abar_next)
  orders = jnp.asarray(step_orders(num_steps, order, lower_order_final))

  def step(model_fn, carry, xs):
    x, x0_1, x0_2 = carry
    t, a, a_next, e_h, hi, hi_1, hi_2, k = xs
    _, x0 = eps_x0(model_fn, x, t, a, y, prediction, clip_x0)
    d0, d1, d2 = multistep_derivatives(x0, x0_1, x0_2, hi, hi_1, hi_2, k)
    alpha_next = jnp.sqrt(a_next)
    x_next = jnp.sqrt((1.0 - a_next) / (1.0 - a)) * x - alpha_next * (e_h - 1.0) * d0
    x_next = x_next + jnp.where(k == 2, -0.5 * alpha_next * (e_h - 1.0), alpha_next * ((e_h - 1.0) / hi + 1.0)) * d1
    x_next = x_next - alpha_next * ((e_h - 1.0 + hi) / hi**2 - 0.5) * d2
    return (x_next, x0, x0_1), None

  x, _ = initial_noise(rng, shape)
  zeros = jnp.zeros(shape)
  (x, _, _), _ = model_scan(model_fn, step, (x, zeros, zeros), (ts, abar, abar_next, ratio, h, h_1, h_2, orders),
                            shape)
  return x
