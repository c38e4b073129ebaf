"""Timestep weightings of the denoising loss (each a function of the SNR) and the loss itself, on any prediction
target (parametrization.py), with uniform or importance-sampled training times."""
import importlib

import jax
import jax.numpy as jnp

from diffusion_jax.parametrization import bcast, path_coefficients, q_sample, target
from diffusion_jax.registry import Registry
from diffusion_jax.schedules import Schedule

WEIGHTINGS = Registry("weighting")


def eps_loss_factor(log_snr, prediction):
  """||target - target_hat||^2 / ||eps - eps_hat||^2 at fixed x_t: 1 (eps), 1/SNR (x0), 1 + 1/SNR (v, VP only)."""
  if prediction not in ("eps", "x0", "v"):
    raise ValueError(f"This weighting is defined on the eps, x0 or v loss, not on {prediction!r}")
  return {"eps": jnp.ones_like(log_snr), "x0": jnp.exp(-log_snr), "v": 1.0 + jnp.exp(-log_snr)}[prediction]


def target_factor(alpha, sigma, dalpha, dsigma, prediction):
  """eps_loss_factor on any path and for the velocity too: 1 (eps), sigma^2 / alpha^2 (x0),
  (alpha^2 + sigma^2)^2 / alpha^2 (v), (dsigma - dalpha sigma / alpha)^2 (velocity: u - u_hat = (dsigma - dalpha
  sigma / alpha)(eps - eps_hat) at fixed x_t)."""
  ratio = sigma / alpha
  return {"eps": jnp.ones_like(ratio), "x0": jnp.square(ratio), "v": jnp.square(alpha + sigma * ratio),
          "velocity": jnp.square(dsigma - dalpha * ratio)}[prediction]


# A weighting is fn(log_snr, prediction, dlog_snr_dt, options) -> the per-example weight of the chosen target's
# squared error; `options` is config.training (p2_gamma, p2_k, min_snr_gamma, or a user weighting's own fields).


@WEIGHTINGS.register("uniform")
def uniform(log_snr, prediction, dlog_snr_dt, options):
  """L_simple (Ho et al. 2020): every timestep weighted 1 in the loss of the chosen target."""
  return jnp.ones_like(log_snr)


@WEIGHTINGS.register("p2")
def p2(log_snr, prediction, dlog_snr_dt, options):
  """Perception-prioritized weighting (Choi et al. 2022, eq. 8): 1 / (k + SNR)^gamma on the target's loss (the paper
  trains eps); it lowers the weight of the high-SNR, detail-only steps. gamma = 0 is uniform; the paper uses k = 1."""
  return jnp.exp(-options.p2_gamma * jnp.logaddexp(jnp.log(options.p2_k), log_snr))


@WEIGHTINGS.register("min_snr")
def min_snr(log_snr, prediction, dlog_snr_dt, options):
  """Min-SNR-gamma (Hang et al. 2023, eq. 10): the x0 loss weighted min(SNR, gamma), i.e. min(SNR, gamma) / SNR on the
  eps loss, min(SNR, gamma) on the x0 loss and min(SNR, gamma) / (SNR + 1) on the v loss. gamma -> inf is L_simple."""
  eps_weight = jnp.exp(jnp.minimum(0.0, jnp.log(options.min_snr_gamma) - log_snr))
  return eps_weight / eps_loss_factor(log_snr, prediction)


@WEIGHTINGS.register("likelihood")
def likelihood(log_snr, prediction, dlog_snr_dt, options):
  """Continuous-time ELBO / VLB weighting: -d log_snr / dt on the eps loss (Kingma et al. 2021, eq. 17), which is
  g(t)^2 / sigma_t^2, Song et al.'s (2021b) likelihood weighting lambda(t) = g(t)^2 of the score loss."""
  return -dlog_snr_dt / eps_loss_factor(log_snr, prediction)


@WEIGHTINGS.register("edm")
def edm(log_snr, prediction, dlog_snr_dt, options):
  """EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on the denoiser's (x0) loss (Karras et al.
  2022, Table 1), sigma^2 = e^-lambda: (sigma^2 + sigma_data^2) / sigma_data^2 on the eps loss (options.sigma_data)."""
  sigma_data2 = options.sigma_data ** 2
  return (jnp.exp(-log_snr) + sigma_data2) / sigma_data2 / eps_loss_factor(log_snr, prediction)


@WEIGHTINGS.register("sigmoid")
def sigmoid(log_snr, prediction, dlog_snr_dt, options):
  """Kingma & Gao 2023's sigmoid weighting: the ELBO's -d lambda / dt on the eps loss times sigmoid(b - lambda), so
  that uniform t gives the effective weighting w(lambda) = sigmoid(b - lambda) (b = options.sigmoid_bias)."""
  return -dlog_snr_dt * jax.nn.sigmoid(options.sigmoid_bias - log_snr) / eps_loss_factor(log_snr, prediction)


def effective_weighting(path, time_sampling, weighting, prediction, options, lam):
  """w(lambda) = p(lambda) x weight x target factor (Kingma & Gao 2023, eq. 8 and Table 1): the weight per unit of
  log-SNR that training with `time_sampling` (timesteps.py), `weighting` and `prediction` puts on the eps error."""
  t = path.t_from_log_snr(lam)
  log_snr, dlog_snr_dt = jax.jvp(path.log_snr, (t,), (jnp.ones_like(t),))
  weight = get_weighting(weighting)(log_snr, prediction, dlog_snr_dt, options)
  return time_sampling.log_snr_density(path, lam) * weight * target_factor(*path_coefficients(path, t), prediction)


def get_weighting(name):
  """The weighting registered as `name`, or a user's function given as "package.module:function" (same signature)."""
  if ":" not in name:
    return WEIGHTINGS.get(name)
  module, fn = name.split(":", 1)
  try:
    return getattr(importlib.import_module(module), fn)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"Weighting {name!r}: cannot import {fn!r} from {module!r} ({e}). Use a registered name "
                     f"({', '.join(WEIGHTINGS.names())}) or 'module:function' with the signature of losses.uniform")


def example_keys(rng, index):
  """One key per example from its global index in the batch, so that its draws do not depend on how the batch is split
  (gradient accumulation's microbatches, the processes' rows)."""
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(index)


def each(draw, keys):
  """draw(key, 1) [1] for each example's key: [N]."""
  return jax.vmap(lambda k: draw(k, 1)[0])(keys)


def _draw(rng, w, num):
  """Indices drawn with probabilities proportional to w >= 0, by inverting the cumulative sum."""
  cdf = jnp.cumsum(w) / jnp.sum(w)
  return jnp.minimum(jnp.searchsorted(cdf, jax.random.uniform(rng, (num,))), len(w) - 1)


def importance_t(process, keys, weight_fn, num_cells=1000):
  """Training times t ~ p(t) proportional to the weighting w(t), one per example key, each example weighted
  w(t) u(t) / p(t) (u: the uniform training density): the same expected loss as uniform t weighted by w, with less
  variance where w spans orders of magnitude, as the likelihood weighting does (Song et al. 2021b, Sec. 5). A schedule
  draws from its T times; an SDE from num_cells equal cells of [t_min, 1], uniformly within a cell."""
  k_cell, k_u = (jax.vmap(lambda k, c=c: jax.random.fold_in(k, c))(keys) for c in (0, 1))
  if isinstance(process, Schedule):
    grid = process.index_to_t(jnp.arange(process.num_timesteps))
    w = weight_fn(grid)
    return grid[each(lambda k, n: _draw(k, w, n), k_cell)], jnp.full((len(keys),), jnp.mean(w))
  edges = jnp.linspace(process.t_min, 1.0, num_cells + 1)
  w = weight_fn(0.5 * (edges[:-1] + edges[1:]))
  j = each(lambda k, n: _draw(k, w, n), k_cell)
  t = edges[j] + each(jax.random.uniform, k_u) * (edges[1] - edges[0])
  return t, weight_fn(t) * jnp.mean(w) / w[j]


def diffusion_loss(apply_fn, params, process, x0, y, rng, *, prediction, weighting, options=None,
                   importance=False, time_sampling=None, train=True, index=None):
  """Weighted denoising loss with x_t = alpha x0 + sigma eps: t = (i + 1) / T, i ~ U{0..T-1} on a discrete schedule
  (Ho et al. 2020), t ~ U(1e-5, 1) on an SDE (Song et al. 2021), t ~ `time_sampling` (timesteps.py) within
  [t_min, 1 - t_min], or with `importance` t ~ weighting; the network sees
  process.network_time(t); `options` (config.training) holds the weighting's fields, None for one without (uniform,
  likelihood). Returns (scalar loss, aux): aux has per example the unweighted loss, t, log_snr and the
  eps-equivalent squared error (`eps_mse`, comparable across targets and weightings). Each example's t and eps come
  from its key example_keys(rng, index) (index: the examples' global indices in the batch, default 0 .. N - 1); the
  network's own dropout draws one mask per call, from the first example's key."""
  keys = example_keys(rng, jnp.arange(x0.shape[0]) if index is None else index)
  k_t, k_eps = (jax.vmap(lambda k, c=c: jax.random.fold_in(k, c))(keys) for c in (0, 1))
  k_drop = jax.random.fold_in(keys[0], 2)
  weight = get_weighting(weighting)

  def weight_fn(t):
    log_snr, dlog_snr_dt = jax.jvp(process.log_snr, (t,), (jnp.ones_like(t),))
    return weight(log_snr, prediction, dlog_snr_dt, options)
  if importance:
    t, w = importance_t(process, k_t, weight_fn)
  else:
    t = each(process.sample_t, k_t) if time_sampling is None else jnp.clip(
        each(lambda k, n: time_sampling.sample(k, n, process), k_t), process.t_min, 1.0 - process.t_min)
    w = weight_fn(t)
  coefficients = path_coefficients(process, t)
  eps = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], x0.dtype))(k_eps)
  x_t = q_sample(process, x0, t, eps)
  pred = apply_fn({"params": params}, x_t, process.network_time(t), y, train=train, rngs={"dropout": k_drop})
  tgt = target(x0, eps, *(bcast(a, x0) for a in coefficients[:2]), prediction,
               *(bcast(a, x0) for a in coefficients[2:]))
  per_example = jnp.mean(jnp.square(pred - tgt), axis=tuple(range(1, x0.ndim)))
  return jnp.mean(w * per_example), {"per_example": per_example, "t": t, "log_snr": process.log_snr(t),
                                     "eps_mse": per_example / target_factor(*coefficients, prediction)}
