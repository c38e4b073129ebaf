"""What a network predicts and how the predictions convert: x_t = alpha_t x_0 + sigma_t eps, and a network predicts
eps, x_0, v = alpha eps - sigma x_0 (Salimans & Ho 2022) or the velocity u = dx_t / dt = alpha'_t x_0 + sigma'_t eps
(flow matching, Lipman et al. 2023). Losses, SDEs, samplers and guidance all convert through here."""
import jax
import jax.numpy as jnp

PREDICTIONS = ("eps", "x0", "v", "velocity")  # the velocity needs the path's derivatives (path_coefficients)


def check_prediction(prediction):
  if prediction not in PREDICTIONS:
    raise ValueError(f"Unknown prediction target {prediction!r}; valid targets: {', '.join(PREDICTIONS)}")


def bcast(a, x):
  """Broadcasts a per-example [B] array against x [B, ...]."""
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def q_sample(process, x0, t, eps):
  """x_t = alpha_t x0 + sigma_t eps, the forward process at time t (Ho et al. 2020, eq. 4; Kingma et al. 2021,
  eq. 1)."""
  alpha, sigma = process.alpha_sigma(t)
  return bcast(alpha, x0) * x0 + bcast(sigma, x0) * eps


def path_coefficients(process, t):
  """(alpha_t, sigma_t, d alpha_t / dt, d sigma_t / dt) of a process's path, the derivatives by JAX."""
  t = jnp.asarray(t, jnp.float32)
  (alpha, sigma), (dalpha, dsigma) = jax.jvp(process.alpha_sigma, (t,), (jnp.ones_like(t),))
  return alpha, sigma, dalpha, dsigma


def _needs_derivatives(dalpha, dsigma):
  if dalpha is None or dsigma is None:
    raise ValueError("The velocity target needs the path's derivatives dalpha, dsigma (path_coefficients)")


def target(x0, eps, alpha, sigma, prediction, dalpha=None, dsigma=None):
  """Regression target; v = alpha eps - sigma x0 (Salimans & Ho 2022, eq. 8); velocity = dalpha x0 + dsigma eps
  (Lipman et al. 2023, eq. 20 for the conditional OT path)."""
  check_prediction(prediction)
  if prediction == "velocity":
    _needs_derivatives(dalpha, dsigma)
    return dalpha * x0 + dsigma * eps
  return {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}[prediction]


def to_eps_x0(pred, x_t, alpha, sigma, prediction, dalpha=None, dsigma=None):
  """Network output -> (eps_hat, x0_hat) using x_t = alpha x0 + sigma eps (and alpha^2 + sigma^2 = 1 for v; for the
  velocity, the 2x2 system of x_t and u = dalpha x0 + dsigma eps)."""
  check_prediction(prediction)
  if prediction == "eps":
    return pred, (x_t - sigma * pred) / alpha
  if prediction == "x0":
    return (x_t - alpha * pred) / sigma, pred
  if prediction == "v":
    return sigma * x_t + alpha * pred, alpha * x_t - sigma * pred
  _needs_derivatives(dalpha, dsigma)
  det = alpha * dsigma - sigma * dalpha
  return (alpha * pred - dalpha * x_t) / det, (dsigma * x_t - sigma * pred) / det


def eps_x0_on(process, pred, x_t, t, prediction):
  """to_eps_x0 at times t [B] of `process`'s path, whatever the prediction (the velocity's derivatives by JAX)."""
  alpha, sigma, dalpha, dsigma = (bcast(a, x_t) for a in path_coefficients(process, t))
  return to_eps_x0(pred, x_t, alpha, sigma, prediction, dalpha, dsigma)


def target_on(process, x0, eps, t, prediction):
  """target at times t [B] of `process`'s path."""
  alpha, sigma, dalpha, dsigma = (bcast(a, x0) for a in path_coefficients(process, t))
  return target(x0, eps, alpha, sigma, prediction, dalpha, dsigma)


def vp_view(fn, process, prediction=None):
  """A function of x_t on `process`'s path, seen by a sampler of the variance-preserving form: it takes
  x_vp = x_t / sqrt(alpha^2 + sigma^2), whose log-SNR is the path's, and, given the network's `prediction`, returns
  the VP v-prediction alpha_vp eps - sigma_vp x0 (alpha_vp = alpha / s, sigma_vp = sigma / s); without `prediction`
  (a classifier's log-probability) it returns fn's value. An eps model, whose x0 = (x_t - sigma eps) / alpha is
  singular where alpha = 0, is queried at the path's t_max at most."""
  def view(x, t, y=None):
    if prediction == "eps":
      t = jnp.minimum(t, getattr(process, "t_max", 1.0))
    alpha, sigma = (bcast(a, x) for a in process.alpha_sigma(t))
    scale = jnp.sqrt(jnp.square(alpha) + jnp.square(sigma))
    x_t = x * scale
    if prediction is None:
      return fn(x_t, t, y)
    eps, x0 = eps_x0_on(process, fn(x_t, t, y), x_t, t, prediction)
    return (alpha * eps - sigma * x0) / scale
  return view
