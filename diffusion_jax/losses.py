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


@WEIGHTINGS.register("uniform")
def uniform(log_snr, prediction):
  """L_simple (Ho et al. 2020): every timestep weighted 1 in the loss of the chosen target."""
  return jnp.ones_like(log_snr)


def bcast(a, x):
  """Broadcasts a per-example [B] array against x [B, ...]."""
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def diffusion_loss(apply_fn, params, schedule, x0, y, rng, *, prediction, weighting, train=True):
  """Weighted denoising loss: t = (i + 1) / T with i ~ U{0..T-1}, x_t = alpha x0 + sigma eps (Ho et al. 2020).
  Returns (scalar loss, {"per_example": unweighted per-example loss, "t": t})."""
  k_t, k_eps, k_drop = jax.random.split(rng, 3)
  b = x0.shape[0]
  i = jax.random.randint(k_t, (b,), 0, schedule.num_timesteps)
  t = schedule.index_to_t(i)
  alpha, sigma = schedule.alpha_sigma(t)
  eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
  x_t = bcast(alpha, x0) * x0 + bcast(sigma, x0) * eps
  pred = apply_fn({"params": params}, x_t, schedule.t_to_index(t), y, train=train, rngs={"dropout": k_drop})
  tgt = target(x0, eps, bcast(alpha, x0), bcast(sigma, x0), prediction)
  per_example = jnp.mean(jnp.square(pred - tgt), axis=tuple(range(1, x0.ndim)))
  w = WEIGHTINGS.get(weighting)(schedule.log_snr(t), prediction)
  return jnp.mean(w * per_example), {"per_example": per_example, "t": t}
