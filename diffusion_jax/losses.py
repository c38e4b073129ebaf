"""Prediction targets (eps, x0, v) and timestep weightings of the denoising loss."""
import jax
import jax.numpy as jnp

from diffusion_jax.registry import Registry

PREDICTIONS = ("eps", "x0", "v")
WEIGHTINGS = Registry("weighting")


def check_prediction(prediction):
  if prediction not in PREDICTIONS:
    raise ValueError(f"Unknown prediction target {prediction!r}; valid targets: {', '.join(PREDICTIONS)}")


def target(x0, eps, alpha, sigma, prediction):
  """Regression target; v = alpha eps - sigma x0 (Salimans & Ho 2022, eq. 8)."""
  check_prediction(prediction)
  return {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}[prediction]


def to_eps_x0(pred, x_t, alpha, sigma, prediction):
  """Network output -> (eps_hat, x0_hat) using x_t = alpha x0 + sigma eps (and alpha^2 + sigma^2 = 1 for v)."""
  check_prediction(prediction)
  if prediction == "eps":
    return pred, (x_t - sigma * pred) / alpha
  if prediction == "x0":
    return (x_t - alpha * pred) / sigma, pred
  return sigma * x_t + alpha * pred, alpha * x_t - sigma * pred


def eps_loss_factor(log_snr, prediction):
  """||target - target_hat||^2 / ||eps - eps_hat||^2 at fixed x_t: 1 (eps), 1/SNR (x0), 1 + 1/SNR (v, VP only)."""
  return {"eps": jnp.ones_like(log_snr), "x0": jnp.exp(-log_snr), "v": 1.0 + jnp.exp(-log_snr)}[prediction]


@WEIGHTINGS.register("uniform")
def uniform(log_snr, prediction, dlog_snr_dt):
  """L_simple (Ho et al. 2020): every timestep weighted 1 in the loss of the chosen target."""
  return jnp.ones_like(log_snr)


@WEIGHTINGS.register("likelihood")
def likelihood(log_snr, prediction, dlog_snr_dt):
  """Continuous-time ELBO weighting: -d log_snr / dt on the eps loss (Kingma et al. 2021, eq. 17), which is
  g(t)^2 / sigma_t^2, Song et al.'s (2021b) likelihood weighting lambda(t) = g(t)^2 of the score loss."""
  return -dlog_snr_dt / eps_loss_factor(log_snr, prediction)


def bcast(a, x):
  """Broadcasts a per-example [B] array against x [B, ...]."""
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def q_sample(process, x0, t, eps):
  """x_t = alpha_t x0 + sigma_t eps, the forward process at time t (Ho et al. 2020, eq. 4; Kingma et al. 2021, eq. 1)."""
  alpha, sigma = process.alpha_sigma(t)
  return bcast(alpha, x0) * x0 + bcast(sigma, x0) * eps


def diffusion_loss(apply_fn, params, process, x0, y, rng, *, prediction, weighting, train=True):
  """Weighted denoising loss with x_t = alpha x0 + sigma eps: t = (i + 1) / T, i ~ U{0..T-1} on a discrete schedule
  (Ho et al. 2020), t ~ U(1e-5, 1) on an SDE (Song et al. 2021); the network sees process.network_time(t).
  Returns (scalar loss, {"per_example": unweighted per-example loss, "t": t})."""
  k_t, k_eps, k_drop = jax.random.split(rng, 3)
  t = process.sample_t(k_t, x0.shape[0])
  alpha, sigma = process.alpha_sigma(t)
  eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
  x_t = q_sample(process, x0, t, eps)
  pred = apply_fn({"params": params}, x_t, process.network_time(t), y, train=train, rngs={"dropout": k_drop})
  tgt = target(x0, eps, bcast(alpha, x0), bcast(sigma, x0), prediction)
  per_example = jnp.mean(jnp.square(pred - tgt), axis=tuple(range(1, x0.ndim)))
  log_snr, dlog_snr_dt = jax.jvp(process.log_snr, (t,), (jnp.ones_like(t),))
  w = WEIGHTINGS.get(weighting)(log_snr, prediction, dlog_snr_dt)
  return jnp.mean(w * per_example), {"per_example": per_example, "t": t}
