"""Likelihood in bits/dim through the probability-flow ODE (Song et al. 2021, App. D.2):
log p_0(x) = log p_T(x_T) + int_eps^T div f~(x_t, t) dt, the divergence by Hutchinson's estimator (Gaussian or
Rademacher probes) or exactly, solved with diffrax's Dormand-Prince; uniform dequantisation of discrete pixels."""
import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.sde import score_fn

PROBES = ("rademacher", "gaussian", "exact")


def _divergence(f, x, z, probe):
  """(f(x), div f(x)) per example; reverse mode (z^T J) z, since the U-Net's attention has a custom VJP."""
  if probe == "exact":  # trace of the per-example Jacobian (small dimensions only)
    flat = x.reshape(x.shape[0], -1)
    jac = jax.vmap(jax.jacrev(lambda xi: f(xi.reshape((1,) + x.shape[1:])).reshape(-1)))(flat)
    return f(x), jnp.trace(jac, axis1=-2, axis2=-1)
  fx, vjp = jax.vjp(f, x)
  return fx, jnp.sum((vjp(z)[0] * z).reshape(x.shape[0], -1), axis=-1)


def log_likelihood(model_fn, sde, x, rng, *, y=None, prediction="eps", probe="rademacher", rtol=1e-5, atol=1e-5,
                   eps=1e-5, max_steps=4096):
  """(log p(x) in nats per example, number of network evaluations) for continuous x."""
  if probe not in PROBES:
    raise ValueError(f"Unknown divergence probe {probe!r}; valid probes: {', '.join(PROBES)}")
  flow = sde.reverse(score_fn(model_fn, sde, y, prediction), probability_flow=True)
  z = (jax.random.rademacher(rng, x.shape).astype(x.dtype) if probe == "rademacher"
       else jax.random.normal(rng, x.shape))

  def field(t, state, args):
    xt, _ = state
    fx, div = _divergence(lambda v: flow.sde(v, jnp.full((x.shape[0],), t))[0], xt, z, probe)
    return fx, div

  sol = diffrax.diffeqsolve(diffrax.ODETerm(field), diffrax.Dopri5(), t0=eps, t1=sde.t_max, dt0=(sde.t_max - eps) / 32,
                            y0=(x, jnp.zeros((x.shape[0],))), stepsize_controller=diffrax.PIDController(rtol, atol),
                            max_steps=max_steps, saveat=diffrax.SaveAt(t1=True))
  x_T, delta = sol.ys[0][0], sol.ys[1][0]
  return sde.prior_logp(x_T) + delta, sol.stats["num_steps"] * 6 + 1


def dequantize(x, rng, num_bins):
  """x in [-1, 1] on `num_bins` levels -> uniformly dequantised x (Ho et al. 2016 / Song et al.: (k + u) / bins)."""
  k = jnp.round((x + 1.0) / 2.0 * (num_bins - 1))
  return 2.0 * (k + jax.random.uniform(rng, x.shape)) / num_bins - 1.0


def bits_per_dim(model_fn, sde, x, rng, *, num_bins=256, **kwargs):
  """Negative log-likelihood of the discrete data in bits/dim: -log2 p(x_deq) / D + log2(num_bins / 2), where the
  offset is the log-volume of one bin of width 2 / num_bins in [-1, 1]. Returns (bpd per example, NFE)."""
  k_deq, k_probe = jax.random.split(rng)
  logp, nfe = log_likelihood(model_fn, sde, dequantize(x, k_deq, num_bins), k_probe, **kwargs)
  d = np.prod(x.shape[1:])
  return -logp / (d * np.log(2.0)) + np.log2(num_bins / 2.0), nfe
