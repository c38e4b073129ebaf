"""DPM-Solver++(2M / 3M), SDE-DPM-Solver++ and Euler ancestral against diffusers' schedulers (PyTorch, CPU): every x
along the trajectory (the inputs the model receives) and the final sample, from the same x_T with the same noise fed
in; and the deterministic solvers' error against a 1000-step reference falling at their order as steps double."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, EulerAncestralDiscreteScheduler
from diffusers.schedulers import scheduling_euler_ancestral_discrete

from diffusion_jax.samplers import get_sampler
from diffusion_jax.samplers.common import initial_noise, respace
from diffusion_jax.schedules import get_schedule
from test_diffusers_schedulers import SHAPE, T, eps_model
from test_guidance import MU_C, two_gaussians_model_fn

LINEAR = get_schedule("linear", T)


def ours(name, steps, rng, **kwargs):
  """(trajectory: the x each model call receives, final sample) of our sampler on the stand-in eps model."""
  seen = []

  def model_fn(x, t, y=None):
    jax.debug.callback(lambda v: seen.append(np.asarray(v)), x, ordered=True)
    return eps_model(x, LINEAR.network_time(t)[:, None, None, None], jnp)
  x = np.asarray(jax.jit(lambda r: get_sampler(name)(model_fn, LINEAR, SHAPE, r, num_steps=steps, **kwargs))(rng))
  jax.effects_barrier()
  return np.stack(seen), x


def theirs(scheduler, steps, x, noise=None, scale=lambda x, t: x, timesteps=None):
  """diffusers' loop: (the model's inputs, final sample); `noise` feeds the SDE solver's variance_noise."""
  scheduler.set_timesteps(**({"timesteps": timesteps} if timesteps is not None else {"num_inference_steps": steps}))
  x, seen = torch.from_numpy(np.array(x)), []
  for i, t in enumerate(scheduler.timesteps):
    model_in = scale(x, t)
    seen.append(model_in.numpy().copy())
    kw = {} if noise is None else {"variance_noise": torch.from_numpy(noise[i])}
    x = scheduler.step(eps_model(model_in, t.float(), torch), t, x, **kw).prev_sample
  return np.stack(seen), x.numpy()


def fed_noise(rng, steps):
  x, k = initial_noise(rng, SHAPE)
  return np.asarray(x), [np.asarray(jax.random.normal(key, SHAPE)) for key in jax.random.split(k, steps)]


@pytest.mark.parametrize("order,steps", [(2, 8), (2, 20), (3, 8), (3, 20), (1, 6)])
def test_dpm_solver_pp_multistep_equals_diffusers_along_the_trajectory(order, steps):
  rng = jax.random.PRNGKey(5)
  x_T, _ = fed_noise(rng, steps)
  scheduler = DPMSolverMultistepScheduler(num_train_timesteps=T, beta_schedule="linear", solver_order=order,
                                          algorithm_type="dpmsolver++", timestep_spacing="trailing")
  scheduler.set_timesteps(steps)
  np.testing.assert_array_equal(scheduler.timesteps.numpy(), respace(T, steps, "trailing"))
  path, x = ours("dpm_solver++", steps, rng, order=order)
  ref_path, ref_x = theirs(scheduler, steps, x_T)
  np.testing.assert_allclose(path, ref_path, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(x, ref_x, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("order,steps", [(1, 8), (2, 8), (2, 20)])
def test_sde_dpm_solver_pp_equals_diffusers_along_the_trajectory(order, steps):
  rng = jax.random.PRNGKey(6)
  x_T, noise = fed_noise(rng, steps)
  scheduler = DPMSolverMultistepScheduler(num_train_timesteps=T, beta_schedule="linear", solver_order=order,
                                          algorithm_type="sde-dpmsolver++", timestep_spacing="trailing")
  path, x = ours("sde_dpm_solver++", steps, rng, order=order)
  ref_path, ref_x = theirs(scheduler, steps, x_T, noise)
  np.testing.assert_allclose(path, ref_path, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(x, ref_x, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("steps,lower_order_final", [(9, True), (10, True), (10, False), (20, True)])
def test_dpm_solver_pp_2s_equals_diffusers_singlestep_along_the_trajectory(steps, lower_order_final):
  """diffusers' singlestep scheduler on our trailing grid (given as its custom timesteps)."""
  rng = jax.random.PRNGKey(8)
  x_T, _ = fed_noise(rng, steps)
  scheduler = DPMSolverSinglestepScheduler(num_train_timesteps=T, beta_schedule="linear", solver_order=2,
                                           lower_order_final=lower_order_final)
  path, x = ours("dpm_solver++_2s", steps, rng, lower_order_final=lower_order_final)
  ref_path, ref_x = theirs(scheduler, steps, x_T, timesteps=list(respace(T, steps, "trailing")))
  np.testing.assert_allclose(path, ref_path, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(x, ref_x, atol=2e-5, rtol=1e-5)


def test_euler_ancestral_equals_diffusers_along_the_trajectory(monkeypatch):
  """Leading spacing, where diffusers starts from sqrt(sigma_T^2 + 1) x_T, the VP sampler's x_T (with linspace or
  trailing it starts from sigma_T x_T instead); the model sees scale_model_input's x / sqrt(sigma^2 + 1)."""
  rng, steps = jax.random.PRNGKey(7), 10
  x_T, noise = fed_noise(rng, steps)
  fed = iter(noise)
  monkeypatch.setattr(scheduling_euler_ancestral_discrete, "randn_tensor", lambda *a, **k: torch.from_numpy(next(fed)))
  scheduler = EulerAncestralDiscreteScheduler(num_train_timesteps=T, beta_schedule="linear",
                                              timestep_spacing="leading")
  scheduler.set_timesteps(steps)
  start = x_T * float(scheduler.init_noise_sigma)
  path, x = ours("euler_ancestral", steps, rng)
  ref_path, ref_x = theirs(scheduler, steps, start, scale=scheduler.scale_model_input)
  np.testing.assert_allclose(path, ref_path, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(x, ref_x, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name,order", [("dpm_solver++", 1), ("dpm_solver++", 2), ("dpm_solver++", 3),
                                        ("dpm_solver++_2s", 2)])
def test_dpm_solver_pp_error_falls_at_its_order(name, order):
  """Exact eps of a Gaussian: the final sample's error against the same solver at 1000 steps falls by about 2^order
  per doubling of 40, 80, 160 steps. On the linspace grid every run ends with the same step, from index 0 to the
  x0 prediction, whose error (sigma_0^2, not a power of the step) is common to all and cancels; the first steps,
  of lower order by the missing history, leave the second doubling closer to the order than the first."""
  model = two_gaussians_model_fn(LINEAR, 10, "eps")
  y = jnp.zeros((256,), jnp.int32)
  kw = {"order": order} if name == "dpm_solver++" else {}
  run = lambda n: np.asarray(get_sampler(name)(model, LINEAR, (256, 2), jax.random.PRNGKey(0), num_steps=n, y=y,
                                               spacing="linspace", **kw), np.float64)
  ref = run(1000)
  errors = [np.abs(run(n) - ref).max() for n in (40, 80, 160)]
  slopes = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
  assert slopes[-1] > order - 0.5 and slopes[0] > order - 1.1, (errors, slopes)
  assert np.abs(ref.mean(0) - np.asarray(MU_C)).max() < 0.1


def test_bad_orders_say_what_is_valid():
  for name, order, valid in (("dpm_solver++", 4, "1, 2, 3"), ("sde_dpm_solver++", 3, "1, 2")):
    with pytest.raises(ValueError, match=f"valid orders: {valid}"):
      get_sampler(name)(lambda x, t, y=None: x, LINEAR, (1, 2), jax.random.PRNGKey(0), num_steps=4, order=order)
