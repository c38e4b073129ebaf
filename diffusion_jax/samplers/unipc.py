"""UniPC (Zhao et al. 2023, "UniPC: A unified predictor-corrector framework for fast sampling of diffusion models"):
multistep solvers of the probability-flow ODE in the data-prediction form, as diffusers' UniPCMultistepScheduler with
predict_x0=True, on any respaced subset of the training steps. The predictor UniP-p extrapolates the x0 predictions of
the last p points in lambda = log alpha - log sigma; the corrector UniC redoes the step just taken with the x0
prediction at its end added as one more point: the model evaluation the next predictor uses, so the corrector costs
no evaluation (num_steps evaluations in all; the last step is not corrected). B(h) is the paper's B_1(h) = h (variant
bh1) or B_2(h) = e^h - 1 (bh2) taken at -h, as in data prediction. The orders are diffusers': min(order, points seen),
and with lower_order_final at most the steps left, at any number of steps (diffusers' UniPC, unlike its DPM-Solver and
DEIS, does not limit this to fewer than 15); the step to sigma = 0 is of first order (its higher-order terms grow
without bound as h -> inf)."""
import jax.numpy as jnp
import numpy as np

from diffusion_jax.samplers.common import eps_x0, grid, initial_noise, model_scan, register_sampler, respace
from diffusion_jax.samplers.dpm_solver import check_order

VARIANTS = ("bh1", "bh2")


def vandermonde_solve(r, b, n):
  """rho with sum_k r_k^j rho_k = b_j for j < n over the first n columns (rho_k = 0 beyond), batched over steps, n
  per step: the order-n system R_n(h) rho = g_n(h) / B(h) of UniP and UniC (Zhao et al. 2023, Sec. 3)."""
  m = r.shape[-1]
  j = jnp.arange(m)
  active = (j < n[:, None])[:, :, None] & (j < n[:, None])[:, None, :]
  R = jnp.where(active, r[:, None, :] ** j[:, None], jnp.eye(m))
  return jnp.linalg.solve(R, jnp.where(j < n[:, None], b, 0.0)[..., None])[..., 0]


@register_sampler("unipc")
def unipc(model_fn, schedule, shape, rng, *, num_steps, y=None, prediction="eps", clip_x0=False, spacing="trailing",
          variant="bh2", order=2, disable_corrector=(), lower_order_final=True):
  """Step i, from s = t_i to t = t_{i+1}, with h = lambda_t - lambda_s, r_k = (lambda_{s_k} - lambda_s) / h at the
  points s_k = t_{i-k} before, D_k = x0_{s_k} - x0_s:
  x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) x0_s - alpha_t B(h) sum_k rho_k D_k / r_k,
  the predictor with rho of R_{p-1} (1/2 at p = 2), the corrector with rho of R_p and the point t itself (r = 1,
  D = x0_t - x0_s; 1/2 alone at p = 1); disable_corrector lists the steps i whose result is left uncorrected."""
  if variant not in VARIANTS:
    raise ValueError(f"UniPC has no variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
  check_order(order, name="UniPC")
  if len(np.unique(respace(schedule.num_timesteps, num_steps, spacing))) != num_steps:
    raise ValueError(f"UniPC needs distinct timesteps; spacing {spacing!r} repeats some at num_steps={num_steps}")
  ts, abar, abar_next = grid(schedule, num_steps, spacing)
  clean = abar_next >= 1.0  # the step to sigma = 0 (h = inf): first order, h = 1 stands in below
  lam = 0.5 * (jnp.log(abar) - jnp.log1p(-abar))
  a_n = jnp.where(clean, 0.5, abar_next)
  h = jnp.where(clean, 1.0, 0.5 * (jnp.log(a_n) - jnp.log1p(-a_n)) - lam)
  i = np.arange(num_steps)
  orders = np.minimum(order, i + 1)
  if lower_order_final:
    orders = np.minimum(orders, num_steps - i)
  orders = jnp.where(clean, 1, jnp.asarray(orders))
  # r_k of the points s_k = t_{i-k}, k = 1, 2 (-k stands in before the first point)
  r = jnp.stack([jnp.where(i >= k, (lam[np.maximum(i - k, 0)] - lam) / h, -k) for k in (1, 2)], -1)
  # e^{-h} - 1 (-1 at sigma = 0), B(h), and g_j / B(h) = h phi_{j+1}(-h) j! / B(h), phi_{j+1} = (phi_j - 1/j!) / (-h)
  hphi_1 = jnp.where(clean, -1.0, jnp.expm1(-h))
  b_h = -h if variant == "bh1" else jnp.expm1(-h)
  hphi, g, fact = hphi_1 / -h - 1.0, [], 1.0
  for j in (1, 2, 3):
    g.append(hphi * fact / b_h)
    fact *= j + 1
    hphi = hphi / -h - 1.0 / fact
  g = jnp.stack(g, -1)
  rho_p = jnp.where((orders == 2)[:, None], jnp.array([0.5, 0.0]), vandermonde_solve(r, g[:, :2], orders - 1))
  rho_c = jnp.where((orders == 1)[:, None], jnp.array([0.5, 0.0, 0.0]),
                    vandermonde_solve(jnp.concatenate([jnp.ones((num_steps, 1)), r], -1), g, orders))
  sigma_ratio = jnp.sqrt((1.0 - abar_next) / (1.0 - abar))
  coef_b = jnp.sqrt(abar_next) * b_h  # alpha_t B(h)
  corrects = jnp.asarray([k > 0 and k - 1 not in disable_corrector for k in range(num_steps)])
  n_d = order - 1  # the D_k a step can use

  def step(model_fn, carry, xs):
    x, x_c, c_t, m = carry  # m: x0 at the last `order` points, newest first
    t, a, a_next, hp1, rk, rp, rc, cb, sr, correct = xs
    _, x0 = eps_x0(model_fn, x, t, a, y, prediction, clip_x0)
    # UniC of the step before: x_c, its update without the new point, + its term in D = x0_t - x0_s
    x = jnp.where(correct, x_c - c_t * (x0 - m[0]), x)
    m = jnp.concatenate([x0[None], m[:-1]])
    d_r = (m[1:] - m[0]) / rk[:n_d].reshape((n_d,) + (1,) * len(shape))  # D_k / r_k
    x_ = sr * x - jnp.sqrt(a_next) * hp1 * m[0]
    x_next = x_ - cb * jnp.tensordot(rp[:n_d], d_r, 1)
    return (x_next, x_ - cb * jnp.tensordot(rc[1:order], d_r, 1), cb * rc[0], m), None

  x, _ = initial_noise(rng, shape)
  carry = (x, jnp.zeros(shape), jnp.zeros(()), jnp.zeros((order,) + shape))
  (x, _, _, _), _ = model_scan(model_fn, step, carry, (ts, abar, abar_next, hphi_1, r, rho_p, rho_c, coef_b,
                                                       sigma_ratio, corrects), shape)
  return x
