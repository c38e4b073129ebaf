"""Classifier-free guidance (Ho & Salimans 2022) and classifier guidance (Dhariwal & Nichol 2021) as wrappers of a
`model_fn`, so that every sampler is guided the same way; plus the label dropout that trains the unconditional mode."""
import jax
import jax.numpy as jnp

from diffusion_jax.parametrization import bcast, eps_x0_on, target_on


def null_like(y, null):
  """The null condition in y's shape: the null label, or for token ids [B, M] the empty prompt's ids [M] per row."""
  return jnp.broadcast_to(jnp.asarray(null, y.dtype), y.shape)


def drop_labels(rng, y, p_uncond, null):
  """Replaces each example's condition (a label, or a row of token ids) by the null one with probability p_uncond
  (Ho & Salimans 2022, Alg. 1)."""
  drop = jax.random.uniform(rng, y.shape[:1]) < p_uncond
  return jnp.where(drop.reshape(-1, *(1,) * (y.ndim - 1)), null_like(y, null), y)


def check_labels(y, num_classes):
  """Labels must lie in 0 .. num_classes - 1 (concrete arrays only; traced labels are not checked)."""
  if y is None:
    return
  if isinstance(y, jax.core.Tracer):
    return
  bad = (y < 0) | (y >= num_classes)
  if bool(jnp.any(bad)):
    raise ValueError(f"Class labels must be in 0..{num_classes - 1}; got {sorted(set(y[bad].tolist()))[:5]}")


def classifier_free(model_fn, w, null_label):
  """eps~ = (1 + w) eps(x, y) - w eps(x, null) (Ho & Salimans 2022, eq. 6), both passes in one batched call; `null` is
  the null label, or the empty prompt's token ids when y holds token ids (null_like). Valid for
  eps, x0 and v outputs alike: weights summing to 1 commute with the affine maps between them at fixed x_t.
  w = 0 returns model_fn itself, so unguided sampling is unchanged bit for bit; w = -1 is the unconditional model,
  eps(x, null), in one pass."""
  if w == 0:
    return model_fn
  if w == -1:
    return lambda x, t, y=None: model_fn(x, t, None if y is None else null_like(y, null_label))

  def guided(x, t, y=None):
    if y is None:
      raise ValueError("classifier-free guidance needs class labels y")
    out = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                   jnp.concatenate([y, null_like(y, null_label)]))
    cond, uncond = jnp.split(out, 2)
    return cond + w * (cond - uncond)
  return guided


def classifier_grad(log_prob_fn):
  """(x, t, y) -> grad_x log p(y | x_t, t), by jax.grad through `log_prob_fn(x, t, y) -> [B]` (examples are
  independent, so the gradient of the sum is the per-example gradient); compiled inside the sampling loop."""
  return jax.grad(lambda x, t, y: jnp.sum(log_prob_fn(x, t, y)))


def classifier_guided(model_fn, process, grad_fn, scale, prediction):
  """eps' = eps - s sigma_t grad log p(y | x_t) (Dhariwal & Nichol 2021, Alg. 2), returned in the model's own
  prediction type; for the score samplers this is score' = score + s grad log p(y | x_t), since score = -eps / sigma_t.
  `process` is the schedule or SDE the sampler runs on. s = 0 returns model_fn itself."""
  if scale == 0:
    return model_fn

  def guided(x, t, y=None):
    alpha, sigma = (bcast(a, x) for a in process.alpha_sigma(t))
    eps, _ = eps_x0_on(process, model_fn(x, t, y), x, t, prediction)
    eps = eps - scale * sigma * grad_fn(x, t, y)
    return target_on(process, (x - sigma * eps) / alpha, eps, t, prediction)
  return guided
