"""What every discrete-time sampler shares: the registry, run options, respaced timestep grids and eps / x0
prediction."""
import inspect

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.losses import to_eps_x0
from diffusion_jax.registry import Registry

SAMPLERS = Registry("sampler")
SPACINGS = ("leading", "leading_offset", "trailing", "linspace", "quadratic")


# Keyword arguments that the caller sets for every sampler (the common signature), not run options.
CONTRACT = ("num_steps", "y", "prediction", "return_nfe", "classifier_grad")
# Run options that every sampler takes, applied around the model by sample.py: classifier-free guidance strength w
# and classifier guidance scale s.
GUIDANCE_OPTIONS = {"w": 0.0, "s": 0.0}


def get_sampler(name):
  return SAMPLERS.get(name)


def sampler_options(name):
  """{option: default} of the run options of sampler `name`: its keyword arguments beyond the common signature,
  and the guidance options."""
  params = inspect.signature(get_sampler(name)).parameters.values()
  own = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in CONTRACT}
  return {**own, **GUIDANCE_OPTIONS}


def _kind(default):
  """(test, description) of the values an option with this default takes (None: a number)."""
  number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
  if isinstance(default, bool):
    return lambda v: isinstance(v, bool), "true or false"
  if isinstance(default, int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"
  if isinstance(default, str):
    return lambda v: isinstance(v, str), "a name"
  return number, "a number"


def check_options(name, kwargs, run=""):
  """Raises ValueError for an option that sampler `name` does not take (listing those it takes) or a value of the
  wrong type."""
  valid = sampler_options(name)
  for k, v in kwargs.items():
    if k not in valid:
      raise ValueError(f"Sampler {name!r} has no option {k!r} (in run {run or name!r}); valid options: "
                       + ", ".join(f"{o}={d}" for o, d in valid.items()))
    ok, what = _kind(valid[k])
    if not ok(v):
      raise ValueError(f"Option {k}={v!r} of sampler run {run or name!r} must be {what} (default {valid[k]!r})")


def respace(num_timesteps, num_steps, spacing="leading"):
  """Descending 0-based indices of a `num_steps` subset of the T training steps.
  leading: 0, T/S, 2T/S, ... (DDIM paper, Song et al. 2020); leading_offset: 1, T/S + 1, ... (diffusers'
  steps_offset=1 with set_alpha_to_one=False, Stable Diffusion's scheduler configs; see grid); trailing: T-1,
  T-1-T/S, ... (Lin et al. 2024); linspace: round(linspace(0, T-1, S)); quadratic: int(linspace(0, sqrt(0.8 T), S)^2), DDIM's CIFAR-10 grid (Song et
  al. 2020, App. D.2), which repeats early indices at large S as the released code does (a repeated step is the
  identity for DDIM and DDPM)."""
  T, S = num_timesteps, num_steps
  if not 1 <= S <= T:
    raise ValueError(f"num_steps must be in [1, {T}] for a {T}-step schedule, got {S}")
  if spacing in ("leading", "leading_offset"):
    idx = np.arange(S) * (T // S) + (spacing == "leading_offset")
  elif spacing == "trailing":
    idx = np.round(np.arange(T, 0, -T / S)).astype(np.int64)[::-1] - 1
  elif spacing == "linspace":
    idx = np.round(np.linspace(0, T - 1, S)).astype(np.int64)
  elif spacing == "quadratic":
    return (np.linspace(0, np.sqrt(0.8 * T), S) ** 2).astype(np.int64)[::-1].copy()
  else:
    raise ValueError(f"Unknown spacing {spacing!r}; valid spacings: {', '.join(SPACINGS)}")
  if len(np.unique(idx)) != S:
    raise ValueError(f"spacing {spacing!r} gives repeated timesteps for num_steps={S}, T={T}")
  return idx[::-1].copy()


def grid(schedule, num_steps, spacing):
  """(t, alpha_bar_t, alpha_bar_prev) along the respaced grid, from noisiest to cleanest; alpha_bar_prev = 1 at the end
  (alpha_bar_0 with leading_offset, as diffusers' set_alpha_to_one=False)."""
  idx = respace(schedule.num_timesteps, num_steps, spacing)
  abar = schedule.alphas_cumprod[idx]
  last = schedule.alphas_cumprod[:1] if spacing == "leading_offset" else jnp.ones((1,))
  abar_prev = jnp.concatenate([abar[1:], last])
  return schedule.index_to_t(idx), abar, abar_prev


def eps_x0(model_fn, x, t, abar, y, prediction, clip_x0):
  """Model output -> (eps_hat, x0_hat) at scalar time t; with clip_x0 the x0 estimate is clipped to [-1, 1] and eps
  recomputed from it (as improved-diffusion does)."""
  tb = jnp.full((x.shape[0],), t)
  alpha, sigma = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
  eps, x0 = to_eps_x0(model_fn(x, tb, y), x, alpha, sigma, prediction)
  if clip_x0:
    x0 = jnp.clip(x0, -1.0, 1.0)
    eps = (x - alpha * x0) / sigma
  return eps, x0


def _value(v):
  for cast in (int, float):
    try:
      return cast(v)
    except ValueError:
      pass
  return {"true": True, "false": False}.get(v.lower(), v)


def parse_runs(spec):
  """'ddpm:1000,ddim:50:eta=0.5,ode:20:solver=heun' ->
  [('ddpm', 1000, {}), ('ddim', 50, {'eta': 0.5}), ('ode', 20, {'solver': 'heun'})], each run's options checked
  against its sampler's (check_options)."""
  runs = []
  for item in [s.strip() for s in spec.split(",") if s.strip()]:
    parts = item.split(":")
    if len(parts) < 2 or not parts[1].isdigit():
      raise ValueError(f"Sampler run {item!r} must look like name:num_steps[:key=value...], e.g. ddim:50:eta=0.5")
    get_sampler(parts[0])
    kwargs = {}
    for kv in parts[2:]:
      k, sep, v = kv.partition("=")
      if not sep:
        raise ValueError(f"Bad option {kv!r} in sampler run {item!r}: options look like key=value")
      kwargs[k] = _value(v)
    check_options(parts[0], kwargs, item)
    runs.append((parts[0], int(parts[1]), kwargs))
  return runs


def initial_noise(rng, shape):
  """x_T ~ N(0, I) and a key for the rest: the same x_T for every discrete sampler given the same rng."""
  k0, k = jax.random.split(rng)
  return jax.random.normal(k0, shape), k


def scan_sampler(step_fn, schedule, shape, rng, num_steps, spacing):
  """Runs x_T ~ N(0, I) through `step_fn(x, (t, abar, abar_prev, key)) -> x` over the grid in one lax.scan."""
  ts, abar, abar_prev = grid(schedule, num_steps, spacing)
  x, k = initial_noise(rng, shape)
  keys = jax.random.split(k, num_steps)
  x, _ = jax.lax.scan(lambda x, xs: (step_fn(x, xs), None), x, (ts, abar, abar_prev, keys))
  return x

