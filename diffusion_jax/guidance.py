"""Guidance as wrappers of a `model_fn` (x, t, y) -> prediction, so that every sampler is guided the same way:
classifier-free guidance (Ho & Salimans 2022), autoguidance by a weaker model (Karras et al. 2024), guidance limited to
an interval of noise levels (Kynkaanniemi et al. 2024) and classifier guidance (Dhariwal & Nichol 2021); the rule that
combines the guided and the reference prediction is plain CFG, CFG rescale (Lin et al. 2024) or adaptive projected
guidance (Sadat et al. 2024). Plus the label dropout that trains the unconditional mode."""
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from diffusion_jax.parametrization import bcast, eps_x0_on, target_on


def null_like(y, null):
  """The null condition in y's shape: the null label, or for token ids [B, M] the empty prompt's ids [M] per row."""
  return jnp.broadcast_to(jnp.asarray(null, y.dtype), y.shape)


def drop_labels(rng, y, p_uncond, null, index=None):
  """Replaces each example's condition (a label, or a row of token ids) by the null one with probability p_uncond
  (Ho & Salimans 2022, Alg. 1), each example's draw from its global index in the batch (default 0 .. N - 1)."""
  index = jnp.arange(y.shape[0]) if index is None else index
  drop = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(rng, i)))(index) < p_uncond
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


@dataclasses.dataclass(frozen=True)
class Stateful:
  """A model function whose output depends on state carried from one network call to the next (APG's momentum):
  apply_state(state, x, t, y) -> (prediction, state), from init_state(shape of x). A sampler threads the state through
  its loop with samplers.common.model_scan; calling it as a plain model function is an error."""
  init_state: Callable
  apply_state: Callable

  def __call__(self, x, t, y=None):
    raise TypeError("This guided model carries state from one network call to the next (APG's momentum, "
                    "apg_beta != 0), which this sampler's loop does not thread (samplers.common.model_scan): use "
                    "apg_beta=0 with it, or a sampler that threads it (every sampler but pc, ode and flow with "
                    "solver=heun)")


def stateless(fn):
  """fn(x, t, y) as apply_state(state, x, t, y) -> (fn(x, t, y), state)."""
  return lambda state, x, t, y=None: (fn(x, t, y), state)


def cfg_rule(w):
  """(cond, ref, x, t, state) -> (cond + w (cond - ref), state): classifier-free guidance (Ho & Salimans 2022, eq. 6)
  with ref = eps(x, null), or autoguidance (Karras et al. 2024, eq. 1, whose w is 1 + this w) with ref = the weaker
  model's prediction. Valid for eps, x0, v and velocity outputs alike: weights summing to 1 commute with the affine
  maps between them at fixed x_t."""
  return lambda cond, ref, x, t, state: (cond + w * (cond - ref), state)


def on_x0(rule, process, prediction):
  """A rule on the denoised predictions x0 = D(x_t) as a rule on the network's `prediction` on `process`: both
  predictions are converted to x0, combined, and the result converted back (with eps = (x_t - alpha x0) / sigma)."""
  def combined(cond, ref, x, t, state):
    x0_cond, x0_ref = (eps_x0_on(process, p, x, t, prediction)[1] for p in (cond, ref))
    x0, state = rule(x0_cond, x0_ref, x, t, state)
    alpha, sigma = (bcast(a, x) for a in process.alpha_sigma(t))
    return target_on(process, x0, (x - alpha * x0) / sigma, t, prediction), state
  return combined


def rescale_cfg(guided, cond, phi):
  """CFG rescale (Lin et al. 2024, eq. 15-16): x_rescaled = guided std(cond) / std(guided), each std over an
  example's elements, returned as phi x_rescaled + (1 - phi) guided."""
  axes = tuple(range(1, guided.ndim))
  factor = jnp.std(cond, axis=axes, keepdims=True) / jnp.std(guided, axis=axes, keepdims=True)
  return phi * guided * factor + (1.0 - phi) * guided


def rescaled(rule, phi):
  """`rule` followed by CFG rescale with factor phi (applied where the rule's inputs are; see on_x0)."""
  def combined(cond, ref, x, t, state):
    guided, state = rule(cond, ref, x, t, state)
    return rescale_cfg(guided, cond, phi), state
  return combined


def apg_update(cond, ref, w, state, eta=0.0, r=0.0, beta=0.0):
  """Adaptive projected guidance (Sadat et al. 2024, Alg. 1), with state = the momentum average m:
  m <- (cond - ref) + beta m (their negative momentum for beta < 0); the update m scaled to norm <= r (r > 0); then
  split into its parts parallel and orthogonal to cond, each over an example's elements; returns
  (cond + w (orthogonal + eta parallel), m)."""
  axes = tuple(range(1, cond.ndim))
  state = (cond - ref) + beta * state
  diff = state
  if r > 0:
    diff = diff * jnp.minimum(1.0, r / jnp.sqrt(jnp.sum(jnp.square(diff), axes, keepdims=True)))
  unit = cond / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(cond), axes, keepdims=True)), 1e-12)
  parallel = jnp.sum(diff * unit, axes, keepdims=True) * unit
  return cond + w * (diff - parallel + eta * parallel), state


def apg_rule(w, eta=0.0, r=0.0, beta=0.0):
  """APG as a rule on x0 predictions (the paper's D), with its momentum buffer as the state (none when beta = 0)."""
  def rule(cond, ref, x, t, state):
    out, momentum = apg_update(cond, ref, w, state if beta else 0.0, eta, r, beta)
    return out, momentum if beta else state
  return rule


def guidance_rule(w, process, prediction, rescale=0.0, apg=False, apg_eta=0.0, apg_r=0.0, apg_beta=0.0):
  """The rule a run's options choose: plain CFG on the network's own prediction, or APG on x0, then with rescale > 0
  CFG rescale on x0 (Lin et al. 2024 apply it to the denoised image's statistics); and whether it carries state."""
  if not apg and not rescale:
    return cfg_rule(w), False
  rule = apg_rule(w, apg_eta, apg_r, apg_beta) if apg else cfg_rule(w)
  if rescale:
    rule = rescaled(rule, rescale)
  return on_x0(rule, process, prediction), bool(apg and apg_beta)


def two_predictions(pair_fn, rule, stateful):
  """The guided model from pair_fn(x, t, y) -> (cond, ref) and a rule; a Stateful one when the rule carries state
  (its zero state has x's shape)."""
  def apply_state(state, x, t, y=None):
    cond, ref = pair_fn(x, t, y)
    return rule(cond, ref, x, t, state)
  if stateful:
    return Stateful(lambda shape: jnp.zeros(shape), apply_state)
  return lambda x, t, y=None: apply_state((), x, t, y)[0]


def classifier_free(model_fn, w, null_label, rule=None, stateful=False):
  """eps~ = (1 + w) eps(x, y) - w eps(x, null) (Ho & Salimans 2022, eq. 6) or another `rule` of the conditional and
  the unconditional prediction, both passes in one batched call; `null` is the null label, or the empty prompt's
  token ids when y holds token ids (null_like). w = 0 returns model_fn itself, so unguided sampling is unchanged bit
  for bit; w = -1 is the unconditional model, eps(x, null), in one pass."""
  if w == 0:
    return model_fn
  if w == -1:
    return lambda x, t, y=None: model_fn(x, t, None if y is None else null_like(y, null_label))

  def pair(x, t, y):
    if y is None:
      raise ValueError("classifier-free guidance needs class labels y")
    out = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([y, null_like(y, null_label)]))
    return jnp.split(out, 2)
  return two_predictions(pair, rule or cfg_rule(w), stateful)


def autoguidance(model_fn, guide_fn, w, rule=None, stateful=False):
  """D = D_good + w (D_good - D_bad) (Karras et al. 2024, eq. 1 with their w = 1 + w): the model guided by a weaker
  version of itself, guide_fn (a smaller or less trained model of the same conditioning), both on the same x_t, t, y,
  or another `rule` of the two. w = 0 returns model_fn itself."""
  if w == 0:
    return model_fn
  return two_predictions(lambda x, t, y: (model_fn(x, t, y), guide_fn(x, t, y)), rule or cfg_rule(w), stateful)


def in_interval(process, t, interval):
  """Whether sigma_t / alpha_t (EDM's sigma) of the scalar time t lies in [sigma_lo, sigma_hi]."""
  alpha, sigma = process.alpha_sigma(t)
  lo, hi = interval
  return (sigma >= lo * alpha) & (sigma <= hi * alpha)


def limited_interval(guided, model_fn, process, interval):
  """Guidance limited to the noise levels sigma_t / alpha_t in [sigma_lo, sigma_hi] (Kynkaanniemi et al. 2024, eq. 4):
  `guided` there, the unguided model_fn elsewhere (the samplers' t is one time per batch). Both are evaluated and one
  is selected, so that each equals its own sampler bit for bit (a lax.cond compiles its branches apart, which moves
  the last bit); a Stateful `guided` keeps its state where it is not selected."""
  def apply_state(state, x, t, y=None):
    guided_apply = guided.apply_state if isinstance(guided, Stateful) else stateless(guided)
    inside = in_interval(process, t[0], interval)
    (out, new_state), plain = guided_apply(state, x, t, y), model_fn(x, t, y)
    return jnp.where(inside, out, plain), jax.tree.map(lambda a, b: jnp.where(inside, a, b), new_state, state)
  if isinstance(guided, Stateful):
    return Stateful(guided.init_state, apply_state)
  return lambda x, t, y=None: apply_state((), x, t, y)[0]


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
  if isinstance(model_fn, Stateful):
    raise ValueError("Classifier guidance (s=) does not compose with APG's momentum (apg_beta != 0); use apg_beta=0")

  def guided(x, t, y=None):
    alpha, sigma = (bcast(a, x) for a in process.alpha_sigma(t))
    eps, _ = eps_x0_on(process, model_fn(x, t, y), x, t, prediction)
    eps = eps - scale * sigma * grad_fn(x, t, y)
    return target_on(process, (x - sigma * eps) / alpha, eps, t, prediction)
  return guided
