"""What every sampler shares: the registry (each sampler with what sampling needs to know of it), run options; and
what the discrete-time ones share: respaced timestep grids and eps / x0 prediction."""
import dataclasses
import inspect
import re
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.config_files import parse_value
from diffusion_jax.parametrization import to_eps_x0
from diffusion_jax.registry import Registry
from diffusion_jax.schedules import Schedule

SAMPLERS = Registry("sampler")
SPACINGS = ("leading", "leading_offset", "trailing", "linspace", "quadratic")


# Keyword arguments that the caller sets for every sampler (the common signature), not run options.
CONTRACT = ("num_steps", "y", "prediction", "return_nfe", "classifier_grad")
# Run options that every sampler takes, applied around the model by sample.py (guidance.py): the strength w of
# classifier-free guidance, or of autoguidance by the model of guide=WORKDIR[:step]; its noise-level interval
# (sigma_lo, sigma_hi); CFG rescale phi; adaptive projected guidance with eta, norm threshold r and momentum beta; and
# the classifier guidance scale s.
GUIDANCE_OPTIONS = {"w": 0.0, "guide": "", "interval": (), "rescale": 0.0, "apg": False, "apg_eta": 0.0, "apg_r": 0.0,
                    "apg_beta": 0.0, "s": 0.0}


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A registered sampler: its function (the common signature; calling the Sampler calls it) and what sampling needs
  to know of it: the process it runs on ("schedule": a discrete Schedule, or a VP SDE's DDPM discretisation; "sde":
  an SDE), its network evaluations nfe(num_steps, options), None where it counts them itself (then it takes
  return_nfe=True and returns (x_0, nfe)), and whether classifier guidance moves its mean (it takes
  classifier_grad, Dhariwal & Nichol's Alg. 1) instead of shifting the model's eps (Alg. 2), and whether a run with
  `options` draws the reverse SDE's noise (stochastic(options)), which a path with a rising log-SNR does not have."""
  fn: Callable
  process: str = "schedule"
  nfe: Callable = lambda num_steps, options: num_steps
  mean_shift_guidance: bool = False
  stochastic: Callable = lambda options: False

  def __call__(self, *args, **kwargs):
    return self.fn(*args, **kwargs)


PROCESSES = ("schedule", "sde")


def register_sampler(name, **spec):
  """Decorator: registers a sampler function under `name` with the Sampler fields `spec`; returns the function."""
  if spec.get("process", "schedule") not in PROCESSES:
    raise ValueError(f"Sampler {name!r}: unknown process {spec['process']!r}; valid: {', '.join(PROCESSES)}")

  def wrap(fn):
    SAMPLERS.register(name)(Sampler(fn, **spec))
    return fn
  return wrap


def get_sampler(name):
  return SAMPLERS.get(name)


def check_reverse_noise(name, process, options):
  """Refuses a stochastic run of sampler `name` on a process whose log-SNR rises somewhere: the reverse SDE's noise
  variance g^2 = -sigma^2 dlambda/dt (paths.py) is negative there, so only the deterministic (ODE) samplers apply."""
  if not get_sampler(name).stochastic(options):
    return
  if isinstance(process, Schedule):  # its T levels, i = 0 (clean) .. T - 1
    lam, ts = np.asarray(process.log_snr_grid), (np.arange(process.num_timesteps) + 1.0) / process.num_timesteps
  else:
    ts = np.linspace(process.t_min, getattr(process, "t_max", 1.0), 1001)
    lam = np.asarray(process.log_snr(jnp.asarray(ts, jnp.float32)))
  rising = np.nonzero(np.diff(lam) > 0)[0]
  if len(rising):
    deterministic = [n for n in SAMPLERS.names() if not SAMPLERS.get(n).stochastic({})]
    raise ValueError(f"Sampler {name!r} with {options or 'its defaults'} draws the reverse SDE's noise, whose variance "
                     f"-sigma^2 dlambda/dt is negative where this path's log-SNR rises (from t = {ts[rising[0]]:.3g}): "
                     f"the path has only the probability-flow ODE; valid: the deterministic samplers "
                     f"{', '.join(deterministic)} (ddim with eta=0, edm with s_churn=0, euler_ancestral with eta=0)")


def samplers_on(process):
  """Names of the samplers that run on `process` ("schedule" or "sde")."""
  return [n for n in SAMPLERS.names() if get_sampler(n).process == process]


def sampler_options(name):
  """{option: default} of the run options of sampler `name`: its keyword arguments beyond the common signature,
  and the guidance options."""
  params = inspect.signature(get_sampler(name).fn).parameters.values()
  own = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in CONTRACT}
  return {**own, **GUIDANCE_OPTIONS}


def parse_options(name, texts, run=""):
  """{option: value} of run options given as text ({"eta": "0.5"}), each parsed as the type of its default in
  sampler `name`; ValueError for an option the sampler does not take (listing those it takes) or a bad value."""
  valid = sampler_options(name)
  options = {}
  for k, text in texts.items():
    if k not in valid:
      raise ValueError(f"Sampler {name!r} has no option {k!r} (in run {run or name!r}); valid options: "
                       + ", ".join(f"{o}={d}" for o, d in valid.items()))
    try:
      options[k] = parse_value(text, valid[k])
    except ValueError as e:
      raise ValueError(f"Option {k}={text} of sampler run {run or name!r}: {e} (default {valid[k]!r})") from None
  return options


def respace(num_timesteps, num_steps, spacing="leading"):
  """Descending 0-based indices of a `num_steps` subset of the T training steps.
  leading: 0, T/S, 2T/S, ... (DDIM paper, Song et al. 2020); leading_offset: 1, T/S + 1, ... (diffusers'
  steps_offset=1 with set_alpha_to_one=False, Stable Diffusion's scheduler configs; see grid); trailing: T-1,
  T-1-T/S, ... (Lin et al. 2024); linspace: round(linspace(0, T-1, S)); quadratic: int(linspace(0, sqrt(0.8 T), S)^2),
  DDIM's CIFAR-10 grid (Song et al. 2020, App. D.2), which repeats early indices at large S as the released code does
  (a repeated step is the identity for DDIM and DDPM)."""
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


MIN_ALPHA_BAR = 1e-30  # alpha = 1e-15: SNR 0 (a zero-terminal-SNR schedule's last step) in finite log-SNR


def grid(schedule, num_steps, spacing):
  """(t, alpha_bar_t, alpha_bar_prev) along the respaced grid, from noisiest to cleanest; alpha_bar_prev = 1 at the end
  (alpha_bar_0 with leading_offset, as diffusers' set_alpha_to_one=False). alpha_bar is at least MIN_ALPHA_BAR, so
  that the log-SNR steps of the multistep solvers stay finite from a zero-terminal-SNR schedule's pure noise."""
  idx = respace(schedule.num_timesteps, num_steps, spacing)
  abar = jnp.maximum(schedule.alphas_cumprod[idx], MIN_ALPHA_BAR)
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


def split_runs(spec):
  """The runs of a comma-separated spec; a piece that does not look like name:num_steps continues the run before."""
  runs = []
  for piece in (p.strip() for p in spec.split(",")):
    if runs and piece and not re.match(r"^[^:=]+:\d+(:|$)", piece):
      runs[-1] += "," + piece
    elif piece:
      runs.append(piece)
  return runs


def parse_runs(spec):
  """'ddpm:1000,ddim:50:eta=0.5,ode:20:solver=heun' ->
  [('ddpm', 1000, {}), ('ddim', 50, {'eta': 0.5}), ('ode', 20, {'solver': 'heun'})], each run's options parsed
  and checked against its sampler's (parse_options).
  An option's value may hold commas and colons (interval=0.28,5.42, guide=runs/small:300): a comma-separated piece
  that does not start a run (name:num_steps) and a colon-separated piece without "=" continue the value before."""
  runs = []
  for item in split_runs(spec):
    parts = item.split(":")
    if len(parts) < 2 or not parts[1].isdigit():
      raise ValueError(f"Sampler run {item!r} must look like name:num_steps[:key=value...], e.g. ddim:50:eta=0.5")
    get_sampler(parts[0])
    texts, last = {}, None
    for kv in parts[2:]:
      k, sep, v = kv.partition("=")
      if not sep and last is not None:
        texts[last] += ":" + kv
        continue
      if not sep:
        raise ValueError(f"Bad option {kv!r} in sampler run {item!r}: options look like key=value")
      texts[k], last = v, k
    runs.append((parts[0], int(parts[1]), parse_options(parts[0], texts, item)))
  return runs


def initial_noise(rng, shape):
  """x_T ~ N(0, I) and a key for the rest: the same x_T for every discrete sampler given the same rng."""
  k0, k = jax.random.split(rng)
  return jax.random.normal(k0, shape), k


def model_scan(model_fn, step, carry, xs, shape):
  """jax.lax.scan of step(model_fn, carry, xs) -> (carry, out) over xs. A model function that carries state from call
  to call (guidance.Stateful: APG's momentum) gets its state threaded through the loop, from init_state(shape): each
  call in a step sees the state the call before it left. Samplers call the model in `step` itself, not inside nested
  control flow."""
  if not hasattr(model_fn, "apply_state"):
    return jax.lax.scan(lambda c, xs: step(model_fn, c, xs), carry, xs)

  def body(c, xs):
    c, state = c
    box = [state]

    def call(x, t, y=None):
      out, box[0] = model_fn.apply_state(box[0], x, t, y)
      return out
    c, out = step(call, c, xs)
    return (c, box[0]), out
  (carry, _), outs = jax.lax.scan(body, (carry, model_fn.init_state(shape)), xs)
  return carry, outs


def scan_sampler(model_fn, step_fn, schedule, shape, rng, num_steps, spacing):
  """Runs x_T ~ N(0, I) through `step_fn(model_fn, x, (t, abar, abar_prev, key)) -> x` over the grid in one
  model_scan."""
  ts, abar, abar_prev = grid(schedule, num_steps, spacing)
  x, k = initial_noise(rng, shape)
  keys = jax.random.split(k, num_steps)
  x, _ = model_scan(model_fn, lambda fn, x, xs: (step_fn(fn, x, xs), None), x, (ts, abar, abar_prev, keys), shape)
  return x

