"""DEIS (Zhang & Chen 2023, "Fast sampling of diffusion models with exponential integrator"): multistep exponential
integrators of the probability-flow ODE, as diffusers' DEISMultistepScheduler (algorithm_type "deis", solver_type
"logrho"), on any respaced subset of the training steps. In y = x / alpha and rho = sigma / alpha the ODE reads
dy / drho = eps (its linear part integrated exactly); each step integrates exactly the polynomial in log rho through
the eps predictions of the last `order` points (Lagrange), diffusers' log-rho variant of the paper's multistep
(Adams-Bashforth) DEIS. The first steps, which lack the history, are of lower order, and with lower_order_final and
fewer than 15 steps so are the last two (first, then at most second order), as diffusers does. The step to sigma = 0
(rho = 0) is the limit of the same integral, which stays finite at every order."""
import math

import jax.numpy as jnp
import numpy as np

from diffusion_jax.samplers.common import eps_x0, grid, initial_noise, model_scan, register_sampler, respace
from diffusion_jax.samplers.dpm_solver import check_order


def log_rho_antiderivative(rho, nodes):
  """F(rho) = integral from 0 to rho of prod_j (log r - u_j) dr = rho Q(log rho), where Q + Q' = prod_j (u - u_j)
  (up to two nodes u_j); F(0) = 0."""
  u = jnp.log(jnp.where(rho > 0, rho, 1.0))
  if not nodes:
    q = 1.0
  elif len(nodes) == 1:
    q = u - nodes[0] - 1.0
  else:
    a, b = nodes
    q = (u - a) * (u - b) - (2.0 * u - a - b) + 2.0
  return jnp.where(rho > 0, rho * q, 0.0)


@register_sampler("deis")
def deis(model_fn, schedule, shape, rng, *, num_steps, y=None, prediction="eps", clip_x0=False, spacing="trailing",
         order=2, lower_order_final=True):
  """x_t = alpha_t (x_s / alpha_s + sum_k c_k eps_k), c_k = integral from rho_s to rho_t of the Lagrange basis
  polynomial L_k(log rho) through the points s_0 = s, s_1, s_2 before it."""
  check_order(order, name="DEIS")
  if len(np.unique(respace(schedule.num_timesteps, num_steps, spacing))) != num_steps:
    raise ValueError(f"DEIS needs distinct timesteps; spacing {spacing!r} repeats some at num_steps={num_steps}")
  ts, abar, abar_next = grid(schedule, num_steps, spacing)
  rho, rho_next = jnp.sqrt((1.0 - abar) / abar), jnp.sqrt((1.0 - abar_next) / abar_next)
  i = np.arange(num_steps)
  orders = np.minimum(order, i + 1)
  if lower_order_final and num_steps < 15:
    orders = np.minimum(orders, num_steps - i)
  # u_k = log rho at the points s_k = t_{i-k} (distinct stand-ins before the first point)
  u = jnp.log(rho)
  u = jnp.stack([jnp.where(i >= k, u[np.maximum(i - k, 0)], u + k) for k in range(order)], -1)
  coefs = jnp.zeros((num_steps, order))
  for p in range(1, order + 1):
    c = []
    for k in range(p):
      others = [u[:, j] for j in range(p) if j != k]
      c.append((log_rho_antiderivative(rho_next, others) - log_rho_antiderivative(rho, others))
               / math.prod(u[:, k] - o for o in others))
    c = jnp.stack(c + [jnp.zeros(num_steps)] * (order - p), -1)
    coefs = jnp.where((orders == p)[:, None], c, coefs)
  # x_s / alpha_s = x0_s + rho_s eps_s: eps_s's coefficient c_0 + rho_s, exactly rho_t at first order (DDIM's step),
  # which keeps a first step from rho_s = inf (zero terminal SNR) finite
  coefs = coefs.at[:, 0].set(jnp.where(jnp.asarray(orders) == 1, rho_next, coefs[:, 0] + rho))

  def step(model_fn, carry, xs):
    x, e = carry  # e: eps at the last `order` points, newest first
    t, a, a_next, c = xs
    eps, x0 = eps_x0(model_fn, x, t, a, y, prediction, clip_x0)
    e = jnp.concatenate([eps[None], e[:-1]])
    return (jnp.sqrt(a_next) * (x0 + jnp.tensordot(c, e, 1)), e), None

  x, _ = initial_noise(rng, shape)
  (x, _), _ = model_scan(model_fn, step, (x, jnp.zeros((order,) + shape)), (ts, abar, abar_next, coefs), shape)
  return x
