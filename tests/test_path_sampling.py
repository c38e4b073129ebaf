"""Every sampler on the new paths: driven by the exact velocity (rectified flow) or denoiser (EDM) of a Gaussian
mixture, each reproduces the mixture; the flow sampler's Euler equals DDIM on the same grid; its shifted grid is
diffusers' FlowMatchEulerDiscreteScheduler's."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.parametrization import vp_view
from diffusion_jax.samplers import get_sampler
from diffusion_jax.samplers.flow import flow_times
from diffusion_jax.schedules import of_path
from diffusion_jax.sde import CosineInterpolantSDE, EDMSDE, RectifiedFlowSDE
from test_mixture import N, check_mixture, mixture_model_fn

RF, EDM, COSINE = RectifiedFlowSDE(), EDMSDE(), CosineInterpolantSDE()


def run(name, path, prediction, steps, **kwargs):
  """A sampler on `path` as sample.py runs it: discrete samplers on the path's VP view, the others on the path."""
  model_fn, process, seen = mixture_model_fn(path, prediction), path, prediction
  if get_sampler(name).process == "schedule":
    model_fn, process, seen = vp_view(model_fn, path, prediction), of_path(path, path.N), "v"
  fn = functools.partial(get_sampler(name), model_fn, process, (N, 2), num_steps=steps, prediction=seen, **kwargs)
  return jax.jit(fn)(jax.random.PRNGKey(0))


@pytest.mark.parametrize("name,path,prediction,steps,kwargs", [
    ("flow", RF, "velocity", 50, {}),
    ("flow", RF, "velocity", 20, {"solver": "heun", "shift": 3.0}),
    ("ddim", RF, "velocity", 50, {"spacing": "trailing"}),
    ("dpm_solver++", RF, "velocity", 20, {}),
    ("edm", RF, "velocity", 30, {"sigma_max": 80.0}),
    ("ode", RF, "velocity", 20, {"solver": "dopri5", "rtol": 1e-4, "atol": 1e-4}),
    ("pc", RF, "velocity", 1000, {"predictor": "euler_maruyama", "corrector": "none"}),
    ("edm", EDM, "x0", 30, {}),
    ("dpm_solver++", EDM, "x0", 20, {}),
    ("ddim", EDM, "x0", 50, {"eta": 1.0}),
    ("flow", EDM, "x0", 30, {"solver": "heun"}),
    ("ode", EDM, "x0", 20, {"solver": "dopri5", "rtol": 1e-4, "atol": 1e-4}),
    ("ddpm", COSINE, "v", 1000, {}),
    ("dpm_solver++", RF, "velocity", 20, {"order": 3}),
    ("dpm_solver++_2s", COSINE, "v", 30, {}),
    ("sde_dpm_solver++", EDM, "x0", 100, {}),
    ("euler_ancestral", RF, "velocity", 200, {}),
    ("unipc", RF, "velocity", 20, {}),
    ("deis", EDM, "x0", 20, {}),
    ("flow", RectifiedFlowSDE(shift=3.0), "velocity", 20, {"solver": "heun"}),
    ("dpm_solver++", CosineInterpolantSDE(shift=0.5), "v", 20, {}),
], ids=lambda v: v if isinstance(v, (str, int)) else None)
def test_sampler_reproduces_mixture_on_the_new_paths(name, path, prediction, steps, kwargs):
  check_mixture(run(name, path, prediction, steps, **kwargs))


def test_flow_euler_on_rectified_flow_equals_ddim_on_the_same_grid():
  # t = 1, 0.9, ..., 0.1, 0: DDIM's trailing grid of 10 steps of T = 1000, the flow sampler's uniform grid
  flow = run("flow", RF, "velocity", 10)
  ddim = run("ddim", RF, "velocity", 10, spacing="trailing")
  np.testing.assert_allclose(flow, ddim, atol=1e-4 * float(jnp.max(jnp.abs(ddim))))


def test_shifted_grid_equals_diffusers_flow_match_euler():
  from diffusers import FlowMatchEulerDiscreteScheduler
  scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
  scheduler.set_timesteps(28)
  np.testing.assert_allclose(flow_times(28, 3.0, "diffusers"), scheduler.sigmas.numpy(), rtol=1e-6, atol=1e-7)
  uniform = flow_times(4, 1.0)
  np.testing.assert_allclose(uniform, [1.0, 0.75, 0.5, 0.25, 0.0], atol=1e-7)


@pytest.mark.parametrize("name,path,prediction,steps", [
    ("flow", RF, "eps", 50),  # an eps model starts at t_max, short of alpha = 0
    ("dpm_solver++", RF, "eps", 20),
    ("dpm_solver++", COSINE, "velocity", 20),  # alpha = 0 at t = 1 with its derivative -pi / 2
])
def test_singular_end_of_interpolant_paths_is_avoided(name, path, prediction, steps):
  check_mixture(run(name, path, prediction, steps))


def test_velocity_model_on_the_vp_sde_runs_the_discrete_samplers(tiny):
  from diffusion_jax import sample
  from diffusion_jax.sde import VPSDE
  config = tiny(**{"diffusion.sde": "vp", "diffusion.prediction": "velocity"})
  vp = VPSDE()
  fn, on, prediction = sample.on_sampler_process(config, mixture_model_fn(vp, "velocity"), vp, "ddim", "velocity")
  assert prediction == "v"
  x = jax.jit(functools.partial(get_sampler("ddim"), fn, on, (N, 2), num_steps=100, prediction="v"))(
      jax.random.PRNGKey(0))
  check_mixture(x)
