"""UniPC and DEIS against diffusers' UniPCMultistepScheduler (predict_x0=True) and DEISMultistepScheduler (PyTorch,
CPU): every x along the trajectory (the inputs the model receives) and the final sample, from the same x_T on the
trailing grid; and their error against the exact solution of a Gaussian's probability-flow ODE falling at their order
as steps double."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DEISMultistepScheduler, UniPCMultistepScheduler

from diffusion_jax.samplers import get_sampler, parse_runs
from diffusion_jax.samplers.common import initial_noise, respace
from diffusion_jax.schedules import Schedule, get_schedule
from test_diffusers_schedulers import SHAPE, T, eps_model
from test_samplers import COV, MU, gaussian_model_fn

LINEAR = get_schedule("linear", T)
RNG = jax.random.PRNGKey(8)
# diffusers' DEIS ends at sigma_min (alpha_bar_0) and its bh1 UniPC at sigma = 0 multiplies B(h) = -inf by 0 (NaN):
# there its last sigma is set to this, where the step differs from the limit sigma -> 0 (ours) by < 1e-8
TINY_SIGMA = 1e-10


def close(ours_, theirs_):
  np.testing.assert_allclose(ours_, theirs_, atol=2e-5, rtol=1e-5)


def ours(name, steps, **kwargs):
  """(trajectory: the x each model call receives, final sample) of our sampler on the stand-in eps model."""
  seen = []

  def model_fn(x, t, y=None):
    jax.debug.callback(lambda v: seen.append(np.asarray(v)), x, ordered=True)
    return eps_model(x, LINEAR.network_time(t)[:, None, None, None], jnp)
  x = np.asarray(jax.jit(lambda r: get_sampler(name)(model_fn, LINEAR, SHAPE, r, num_steps=steps, spacing="trailing",
                                                     **kwargs))(RNG))
  jax.effects_barrier()
  return np.stack(seen), x


def theirs(scheduler, steps, last_sigma=None):
  """diffusers' loop from our x_T on the same grid: (the model's inputs, final sample)."""
  scheduler.set_timesteps(steps)
  np.testing.assert_array_equal(scheduler.timesteps.numpy(), respace(T, steps, "trailing"))
  if last_sigma is not None:
    scheduler.sigmas[-1] = last_sigma
  x, seen = torch.from_numpy(np.array(initial_noise(RNG, SHAPE)[0])), []
  for t in scheduler.timesteps:
    seen.append(x.numpy().copy())
    x = scheduler.step(eps_model(x, t.float(), torch), t, x).prev_sample
  return np.stack(seen), x.numpy()


def unipc_scheduler(variant, order, **kwargs):
  return UniPCMultistepScheduler(num_train_timesteps=T, beta_schedule="linear", solver_order=order, solver_type=variant,
                                 predict_x0=True, timestep_spacing="trailing", final_sigmas_type="zero", **kwargs)


@pytest.mark.parametrize("variant,order,steps,disable", [
    ("bh1", 1, 8, ()), ("bh1", 2, 20, ()), ("bh1", 3, 8, ()), ("bh2", 1, 20, ()), ("bh2", 2, 8, ()), ("bh2", 3, 20, ()),
    ("bh2", 3, 10, (0, 2))])
def test_unipc_equals_diffusers_along_the_trajectory(variant, order, steps, disable):
  path, x = ours("unipc", steps, variant=variant, order=order, disable_corrector=disable)
  ref_path, ref_x = theirs(unipc_scheduler(variant, order, disable_corrector=list(disable)), steps,
                           TINY_SIGMA if variant == "bh1" else None)
  close(path, ref_path)
  close(x, ref_x)


def test_unipc_without_lower_order_final():
  """Steps of order 3 up to the last as diffusers'; its last, to sigma = 0 (h = inf), has no finite value at order > 1
  (diffusers' singular R there; run to TINY_SIGMA instead, it does not touch the points before): ours is of first
  order there, the x0 prediction at the last point."""
  steps = 8
  path, x = ours("unipc", steps, order=3, lower_order_final=False)
  ref_path, _ = theirs(unipc_scheduler("bh2", 3, lower_order_final=False), steps, TINY_SIGMA)
  close(path, ref_path)
  i = respace(T, steps, "trailing")[-1]
  abar = float(LINEAR.alphas_cumprod[i])
  close(x, (path[-1] - np.sqrt(1.0 - abar) * eps_model(path[-1], float(i), np)) / np.sqrt(abar))


@pytest.mark.parametrize("order,steps,lower_order_final", [(1, 8, True), (2, 20, True), (3, 8, True), (3, 20, True),
                                                           (3, 8, False)])
def test_deis_equals_diffusers_along_the_trajectory(order, steps, lower_order_final):
  scheduler = DEISMultistepScheduler(num_train_timesteps=T, beta_schedule="linear", solver_order=order,
                                     lower_order_final=lower_order_final, timestep_spacing="trailing")
  path, x = ours("deis", steps, order=order, lower_order_final=lower_order_final)
  ref_path, ref_x = theirs(scheduler, steps, TINY_SIGMA)
  close(path, ref_path)
  close(x, ref_x)


# log-SNR linear from 12 to -12: the linspace grid of 11, 21, 41 steps is uniform in lambda, and the last point,
# lambda = 6, near enough to sigma = 0 that the last step's error (~ e^{-2 lambda}) stays below the solvers'
LOG_SNR_LINEAR = Schedule(alphas_cumprod=jax.nn.sigmoid(jnp.linspace(12.0, -12.0, 1001)))


def exact_solution(x_T, schedule):
  """The probability-flow ODE of N(MU, COV) from the noisiest grid point to sigma = 0: with y = x / alpha and
  rho = sigma / alpha, dy / drho = eps = rho (COV + rho^2 I)^{-1} (y - MU), so in the eigenbasis of COV (eigenvalues
  s) (y - MU) / sqrt(s + rho^2) stays constant."""
  abar = float(schedule.alphas_cumprod[-1])
  s, v = np.linalg.eigh(np.asarray(COV, np.float64))
  w = (x_T / np.sqrt(abar) - np.asarray(MU, np.float64)) @ v
  return np.asarray(MU, np.float64) + (w * np.sqrt(s / (s + (1.0 - abar) / abar))) @ v.T


@pytest.mark.parametrize("name,order,expected", [("unipc", 1, 2), ("unipc", 2, 3), ("unipc", 3, 4), ("deis", 2, 2),
                                                 ("deis", 3, 3)])
def test_error_falls_at_the_order(name, order, expected):
  """Exact eps of a Gaussian: the final sample's error against the exact ODE solution falls by about 2^expected per
  doubling of the steps: UniPC-p is of order p + 1 (the corrector adds one), DEIS-p of order p."""
  rng, shape = jax.random.PRNGKey(0), (64, 2)
  ref = exact_solution(np.asarray(initial_noise(rng, shape)[0], np.float64), LOG_SNR_LINEAR)
  model = gaussian_model_fn(LOG_SNR_LINEAR)
  errors = [np.abs(np.asarray(jax.jit(lambda r: get_sampler(name)(model, LOG_SNR_LINEAR, shape, r, num_steps=n,
                                                                  spacing="linspace", order=order))(rng)) - ref).max()
            for n in (11, 21, 41)]
  slopes = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
  assert slopes[-1] > expected - 0.5 and slopes[0] > expected - 1.5, (errors, slopes)


def test_bad_options_say_what_is_valid():
  run = lambda name, num_steps=4, **kw: get_sampler(name)(lambda x, t, y=None: x, LINEAR, (1, 2),
                                                          jax.random.PRNGKey(0), num_steps=num_steps, **kw)
  with pytest.raises(ValueError, match="valid variants: bh1, bh2"):
    run("unipc", variant="bh3")
  for name in ("unipc", "deis"):
    for order in (0, 4):
      with pytest.raises(ValueError, match="valid orders: 1, 2, 3"):
        run(name, order=order)
    with pytest.raises(ValueError, match="distinct timesteps"):
      run(name, num_steps=100, spacing="quadratic")
  assert parse_runs("unipc:10:variant=bh1:disable_corrector=0,2,deis:20:order=3") == [
      ("unipc", 10, {"variant": "bh1", "disable_corrector": (0, 2)}), ("deis", 20, {"order": 3})]
