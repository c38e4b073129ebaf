"""The flow-matching sampler: Euler or Heun on dx/dt = u(x, t) = alpha'(t) x_0 + sigma'(t) eps from t = 1 to 0 on any
continuous path (Lipman et al. 2023; Liu et al. 2022), on the time grid shifted as Stable Diffusion 3's (Esser et al.
2024, Sec. 5.3.2): t' = s t / (1 + (s - 1) t), s > 1 spending more steps at high noise."""
import jax.numpy as jnp

from diffusion_jax.parametrization import eps_x0_on, path_coefficients
from diffusion_jax.paths import resolution_shift, shift_time
from diffusion_jax.samplers.common import initial_noise, model_scan, register_sampler
from diffusion_jax.sde import SDE

FLOW_SOLVERS = ("euler", "heun")
FLOW_GRIDS = ("uniform", "diffusers")


def flow_times(num_steps, shift=1.0, grid="uniform"):
  """The num_steps + 1 times from 1 to 0: uniform, shift_time(linspace(1, 0, num_steps + 1)); diffusers, as its
  FlowMatchEulerDiscreteScheduler(shift) with 1000 training steps (Stable Diffusion 3's pipeline):
  shift_time(linspace(1, shift_time(1 / 1000), num_steps)), then 0."""
  if grid not in FLOW_GRIDS:
    raise ValueError(f"Unknown flow grid {grid!r}; valid: {', '.join(FLOW_GRIDS)}")
  if grid == "uniform":
    return shift_time(jnp.linspace(1.0, 0.0, num_steps + 1), shift)
  ts = shift_time(jnp.linspace(1.0, shift_time(1.0 / 1000, shift), num_steps), shift)
  return jnp.concatenate([ts, jnp.zeros((1,))])


def flow_nfe(num_steps, options):
  """Euler: num_steps; Heun: 2 num_steps - 1 (the last step, to t = 0, is Euler's)."""
  return num_steps if options.get("solver", "euler") == "euler" else 2 * num_steps - 1


@register_sampler("flow", process="sde", nfe=flow_nfe)
def flow_sample(model_fn, path, shape, rng, *, num_steps, y=None, prediction="velocity", solver="euler", shift=1.0,
                grid="uniform", base_resolution=0):
  """num_steps steps of Euler or Heun (Euler for the last step, to t = 0) from x_1 ~ the path's prior over
  flow_times(num_steps, shift, grid); with base_resolution > 0 the shift is SD3's for these images against that
  resolution (resolution_shift). On a path that is itself shifted (diffusion.sde=rectified_flow:shift=s) the uniform
  grid already is SD3's, and a sampler shift multiplies the path's. The velocity is the network's own
  (prediction="velocity") or converted from its eps / x0 / v prediction."""
  if not isinstance(path, SDE):
    raise ValueError(f"The flow sampler needs a continuous path, got {type(path).__name__}")
  if solver not in FLOW_SOLVERS:
    raise ValueError(f"Unknown flow solver {solver!r}; valid: {', '.join(FLOW_SOLVERS)}")
  if shift <= 0:
    raise ValueError(f"The flow sampler's shift must be > 0, got {shift}")

  def velocity(model_fn, x, t):
    tb = jnp.full((shape[0],), t)
    pred = model_fn(x, tb, y)
    if prediction == "velocity":
      return pred
    eps, x0 = eps_x0_on(path, pred, x, tb, prediction)
    _, _, dalpha, dsigma = path_coefficients(path, t)
    return dalpha * x0 + dsigma * eps

  def euler(model_fn, x, ts):
    t, t_next = ts
    return x + (t_next - t) * velocity(model_fn, x, t), None

  def heun(model_fn, x, ts):
    t, t_next = ts
    u = velocity(model_fn, x, t)
    x_euler = x + (t_next - t) * u
    return x + (t_next - t) * 0.5 * (u + velocity(model_fn, x_euler, t_next)), None

  if base_resolution:
    shift = resolution_shift(shape[1] * shape[2], base_resolution**2)
  ts = flow_times(num_steps, shift, grid)
  if prediction == "eps":  # x0 = (x - sigma eps) / alpha is singular where alpha = 0: start at the path's t_max
    ts = ts.at[0].set(jnp.minimum(ts[0], path.t_max))
  x, _ = initial_noise(rng, shape)  # the discrete samplers' x_T for the same rng
  x = path.prior_std() * x
  if solver == "euler":
    return model_scan(model_fn, euler, x, (ts[:-1], ts[1:]), shape)[0]
  x, _ = model_scan(model_fn, heun, x, (ts[:-2], ts[1:-1]), shape)
  return euler(model_fn, x, (ts[-2], ts[-1]))[0]
