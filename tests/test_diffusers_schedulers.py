"""Our DDIM and DDPM samplers against diffusers' DDIMScheduler / DDPMScheduler (PyTorch, CPU), whole sampling loops on
the same model function, the same x_T and (for eta > 0 and DDPM) the same noise fed in."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers import scheduling_ddpm

from diffusion_jax.samplers import get_sampler
from diffusion_jax.samplers.common import initial_noise
from diffusion_jax.schedules import get_schedule

T, STEPS, SHAPE = 1000, 20, (4, 6, 6, 3)


def eps_model(x, index, lib):
  """A smooth stand-in for a network, a function of x and the training-step index (what diffusers passes)."""
  return 0.8 * lib.tanh(x) * lib.cos(index / 700.0) + 0.1 * lib.sin(index / 100.0 + x)


def ours(name, rng, schedule="linear", spacing="leading", **kwargs):
  schedule = get_schedule(schedule, T)
  model_fn = lambda x, t, y=None: eps_model(x, schedule.network_time(t)[:, None, None, None], jnp)
  return np.asarray(jax.jit(lambda r: get_sampler(name)(model_fn, schedule, SHAPE, r, num_steps=STEPS,
                                                         spacing=spacing, **kwargs))(rng))


def fed_noise(rng):
  """x_T and the per-step noise our samplers draw from rng (samplers.common.scan_sampler)."""
  x, k = initial_noise(rng, SHAPE)
  return np.asarray(x), [np.asarray(jax.random.normal(key, SHAPE)) for key in jax.random.split(k, STEPS)]


def run_diffusers(scheduler, x, step):
  scheduler.set_timesteps(STEPS)
  x = torch.from_numpy(np.array(x))
  for i, t in enumerate(scheduler.timesteps):
    x = step(i, eps_model(x, t.float(), torch), t, x)
  return x.numpy()


@pytest.mark.parametrize("eta,clip", [(0.0, False), (0.0, True), (0.5, False), (1.0, True)])
def test_ddim_equals_diffusers(eta, clip):
  rng = jax.random.PRNGKey(3)
  x_T, z = fed_noise(rng)
  scheduler = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=clip, set_alpha_to_one=True,
                            steps_offset=0, timestep_spacing="leading")
  theirs = run_diffusers(scheduler, x_T, lambda i, eps, t, x: scheduler.step(
      eps, t, x, eta=eta, use_clipped_model_output=True, variance_noise=torch.from_numpy(z[i])).prev_sample)
  np.testing.assert_allclose(ours("ddim", rng, eta=eta, clip_x0=clip), theirs, atol=2e-5, rtol=1e-5)


def test_ddim_equals_stable_diffusions_scheduler():
  """scaled_linear betas with leading_offset spacing: diffusers' DDIM as Stable Diffusion configures it."""
  rng = jax.random.PRNGKey(4)
  x_T, _ = fed_noise(rng)
  scheduler = DDIMScheduler(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                            clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
  np.testing.assert_allclose(get_schedule("scaled_linear", T).alphas_cumprod, scheduler.alphas_cumprod, rtol=1e-6)
  theirs = run_diffusers(scheduler, x_T, lambda i, eps, t, x: scheduler.step(eps, t, x, eta=0.0).prev_sample)
  np.testing.assert_allclose(ours("ddim", rng, schedule="scaled_linear", spacing="leading_offset"), theirs,
                             atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("variance_type,variance", [("fixed_small", "beta_tilde"), ("fixed_large", "beta")])
def test_ddpm_equals_diffusers(variance_type, variance, monkeypatch):
  rng = jax.random.PRNGKey(4)
  x_T, z = fed_noise(rng)
  noise = iter(z)  # diffusers draws noise at every step but the last (t = 0), in order: feed ours instead
  monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *a, **k: torch.from_numpy(next(noise)))
  scheduler = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=True,
                            variance_type=variance_type, timestep_spacing="leading")
  theirs = run_diffusers(scheduler, x_T, lambda i, eps, t, x: scheduler.step(eps, t, x).prev_sample)
  assert len(list(noise)) == 1  # the last step drew none
  np.testing.assert_allclose(ours("ddpm", rng, variance=variance, clip_x0=True), theirs, atol=2e-5, rtol=1e-5)
