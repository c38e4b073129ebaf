"""What a network predicts and how the predictions convert: x_t = alpha_t x_0 + sigma_t eps, and a network predicts
eps, x_0 or v = alpha eps - sigma x_0. Losses, SDEs, samplers and guidance all convert through here."""
PREDICTIONS = ("eps", "x0", "v")


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
