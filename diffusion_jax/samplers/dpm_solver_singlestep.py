"""DPM-Solver++(2S) (Lu et al. 2022, "DPM-Solver++", Alg. 1 on the grid's own points; diffusers'
DPMSolverSinglestepScheduler with solver_order 2): steps in pairs, each pair one second-order singlestep update from
its first point to the point after its second, from the x0 predictions at both points, with a first-order step to the
intermediate point; the last step (to sigma = 0) is first order, and with lower_order_final an even number of steps
ends in two first-order steps. On any respaced subset of the training steps, one network evaluation per step."""
import jax.numpy as jnp
import numpy as np

from diffusion_jax.samplers.common import eps_x0, grid, initial_noise, model_scan, register_sampler


def singlestep_orders(num_steps, lower_order_final=True):
  """1, 2, 1, 2, ...: a pair's first step is first order, its second the singlestep second-order update; the last
  step is 1, and with lower_order_final an even count ends 1, 1 (diffusers' get_order_list for order 2)."""
  orders = np.array([1, 2] * (num_steps // 2) + [1] * (num_steps % 2))
  if lower_order_final and num_steps % 2 == 0 and num_steps >= 2:
    orders[-2] = 1
  orders[-1] = 1
  return orders


@register_sampler("dpm_solver++_2s")
def dpm_solver_pp_2s(model_fn, schedule, shape, rng, *, num_steps, y=None, prediction="eps", clip_x0=False,
                     spacing="trailing", lower_order_final=True):
  """From the pair's start s1 (x_s1, x0 there: D0) over h = lambda_next - lambda_s1 with the midpoint s0 at
  r = (lambda_s0 - lambda_s1) / h: x_next = (sigma_next / sigma_s1) x_s1 - alpha_next (e^{-h} - 1) (D0 + D1 / 2),
  D1 = (x0_s0 - D0) / r; a first-order step is the same with s1 = s0 and D1 = 0."""
  ts, abar, abar_next = grid(schedule, num_steps, spacing)
  orders = jnp.asarray(singlestep_orders(num_steps, lower_order_final))
  abar_before = jnp.concatenate([abar[:1], abar[:-1]])
  lam = lambda a: 0.5 * (jnp.log(a) - jnp.log1p(-a))
  lam_next = lam(jnp.minimum(abar_next, 1.0 - 1e-12))  # finite at sigma = 0, where e^{-h} underflows to 0

  def step(model_fn, carry, xs):
    x, x_start, x0_start = carry
    t, a, a_before, a_next, l_next, k = xs
    _, x0 = eps_x0(model_fn, x, t, a, y, prediction, clip_x0)
    second = k == 2
    x_from, a_from = jnp.where(second, x_start, x), jnp.where(second, a_before, a)
    h = l_next - lam(a_from)
    d0 = jnp.where(second, x0_start, x0)
    d1 = jnp.where(second, (x0 - x0_start) * h / (lam(a) - lam(a_before)), 0.0)
    e_h = jnp.sqrt((1.0 - a_next) / a_next) / jnp.sqrt((1.0 - a_from) / a_from)
    x_next = jnp.sqrt((1.0 - a_next) / (1.0 - a_from)) * x_from - jnp.sqrt(a_next) * (e_h - 1.0) * (d0 + 0.5 * d1)
    return (x_next, x, x0), None

  x, _ = initial_noise(rng, shape)
  (x, _, _), _ = model_scan(model_fn, step, (x, x, jnp.zeros(shape)), (ts, abar, abar_before, abar_next, lam_next,
                                                                         orders), shape)
  return x
