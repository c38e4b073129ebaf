"""Probability-flow ODE sampling (Song et al. 2021, eq. 13) with diffrax: adaptive Dormand-Prince (RK45, rtol/atol,
as Song et al. used) or fixed-step Euler / Heun, integrated from t = 1 to t = eps, then one denoising step."""
import diffrax
import jax.numpy as jnp

from diffusion_jax.parametrization import eps_x0_on
from diffusion_jax.samplers.common import register_sampler
from diffusion_jax.sde import SDE, default_eps, score_fn

# solver -> (diffrax solver, network evaluations per step); Dopri5 is FSAL: 6 new stages per step
SOLVERS = {"dopri5": (diffrax.Dopri5, 6), "euler": (diffrax.Euler, 1), "heun": (diffrax.Heun, 2)}
ADAPTIVE = ("dopri5",)


def fixed_step_nfe(num_steps, options):
  """Network evaluations of a fixed-step solve (and its denoising step); None for an adaptive one, which counts."""
  solver = options.get("solver", "dopri5")
  if solver in ADAPTIVE or solver not in SOLVERS:
    return None
  return num_steps * SOLVERS[solver][1] + (1 if options.get("denoise", True) else 0)


@register_sampler("ode", process="sde", nfe=fixed_step_nfe)
def ode_sample(model_fn, sde, shape, rng, *, num_steps, y=None, prediction="eps", solver="dopri5", rtol=1e-5,
               atol=1e-5, eps=None, denoise=True, return_nfe=False, max_steps=4096):
  """num_steps is the fixed step count of euler / heun and the first trial step (1 - eps) / num_steps of dopri5;
  eps defaults to 1e-3 (VP, sub-VP) or 1e-5 (VE). With return_nfe, returns (x_0, number of network evaluations).
  A solve that reaches max_steps raises (diffrax's default) instead of returning a partial solution."""
  if not isinstance(sde, SDE):
    raise ValueError(f"The ode sampler needs an SDE (vp, subvp, ve), got {type(sde).__name__}")
  if solver not in SOLVERS:
    raise ValueError(f"Unknown ODE solver {solver!r}; valid solvers: {', '.join(sorted(SOLVERS))}")
  cls, evals_per_step = SOLVERS[solver]
  eps = default_eps(sde) if eps is None else eps
  flow = sde.reverse(score_fn(model_fn, sde, y, prediction), probability_flow=True)
  term = diffrax.ODETerm(lambda t, x, args: flow.sde(x, jnp.full((shape[0],), t))[0])
  adaptive = solver in ADAPTIVE
  sol = diffrax.diffeqsolve(
      term, cls(), t0=sde.t_max, t1=eps, dt0=-(sde.t_max - eps) / num_steps, y0=sde.prior_sampling(rng, shape),
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol) if adaptive else diffrax.ConstantStepSize(),
      max_steps=max_steps if adaptive else num_steps, saveat=diffrax.SaveAt(t1=True))
  x = sol.ys[0]
  nfe = sol.stats["num_steps"] * evals_per_step + (1 if adaptive else 0)
  if denoise:  # Tweedie: x_0 = E[x_0 | x_eps], one more network evaluation
    tb = jnp.full((shape[0],), eps)
    _, x = eps_x0_on(sde, model_fn(x, tb, y), x, tb, prediction)
    nfe = nfe + 1
  return (x, nfe) if return_nfe else x


