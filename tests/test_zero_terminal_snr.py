"""Zero terminal SNR (Lin et al. 2024): the rescaled schedule against diffusers' rescale_zero_terminal_snr, and every
discrete sampler started from pure noise (alpha_bar_T = 0) with v and x0 predictions: finite, and the Gaussian
mixture's exact denoiser gives the mixture."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale

from diffusion_jax.samplers import get_sampler
from diffusion_jax.schedules import get_schedule, rescale_zero_terminal_snr
from test_mixture import MEANS, N, check_mixture, mixture_model_fn

ZERO = rescale_zero_terminal_snr(get_schedule("linear", 1000))


def test_rescaled_schedule_equals_diffusers_and_ends_at_snr_zero():
  betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
  theirs = torch.cumprod(1.0 - diffusers_rescale(betas), 0).numpy()
  np.testing.assert_allclose(np.asarray(ZERO.alphas_cumprod), theirs, atol=1e-7)
  assert float(ZERO.alphas_cumprod[-1]) == 0.0
  assert float(ZERO.alphas_cumprod[0]) == pytest.approx(float(get_schedule("linear", 1000).alphas_cumprod[0]), 1e-7)
  assert float(ZERO.log_snr(jnp.ones(()))) == -np.inf and float(ZERO.t_from_log_snr(-jnp.inf)) == 1.0
  lam = np.asarray(ZERO.log_snr(jnp.linspace(0.001, 1.0, 2001)))
  assert not np.isnan(lam).any() and np.all(np.diff(lam[np.isfinite(lam)]) <= 1e-5)


SAMPLER_CASES = [
    ("ddim", 50, {}), ("ddim", 50, {"eta": 1.0}), ("ddpm", 200, {}), ("dpm_solver++", 20, {}),
    ("dpm_solver++", 20, {"order": 3}), ("dpm_solver++_2s", 30, {}), ("sde_dpm_solver++", 100, {}),
    ("unipc", 20, {}), ("unipc", 20, {"variant": "bh1", "order": 3}), ("deis", 20, {"order": 3}),
    ("euler_ancestral", 200, {}), ("euler_ancestral", 50, {}), ("edm", 40, {})]


@pytest.mark.parametrize("name,steps,kwargs,prediction", [(*case, "v") for case in SAMPLER_CASES] + [
    (*case, "x0") for case in SAMPLER_CASES if case[0] in ("ddim", "deis", "euler_ancestral")])
def test_every_sampler_starts_from_pure_noise(name, steps, kwargs, prediction):
  spacing = {} if name == "edm" else {"spacing": "trailing"}  # trailing: the first step at t = T (Lin et al.)
  fn = functools.partial(get_sampler(name), mixture_model_fn(ZERO, prediction), ZERO, (N, 2), num_steps=steps,
                         prediction=prediction, **spacing, **kwargs)
  check_mixture(np.asarray(jax.jit(fn)(jax.random.PRNGKey(0)), np.float64))


@pytest.mark.parametrize("weighting", ["uniform", "p2", "min_snr"])
@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_the_loss_at_pure_noise_is_finite(weighting, prediction, tiny, monkeypatch):
  """Every example at t = 1 (alpha = 0): x_t is the noise, the v target is -x0, and each weighting is finite there."""
  from diffusion_jax import losses
  from diffusion_jax.schedules import Schedule
  monkeypatch.setattr(Schedule, "sample_t", lambda self, rng, batch: jnp.ones((batch,)))
  x0 = jax.random.normal(jax.random.PRNGKey(1), (16, 4, 4, 1))
  seen = []
  apply_fn = lambda variables, x_t, t, y, train, rngs: seen.append(x_t) or jnp.zeros_like(x_t)
  loss, aux = losses.diffusion_loss(apply_fn, {}, ZERO, x0, None, jax.random.PRNGKey(2), prediction=prediction,
                                    weighting=weighting, options=tiny().training)
  assert np.isfinite(float(loss)) and np.isfinite(np.asarray(aux["eps_mse"])).all()
  eps = seen[0]
  np.testing.assert_allclose(aux["per_example"], np.mean(np.square(-x0 if prediction == "v" else x0), (1, 2, 3)),
                             rtol=1e-5)
  assert np.abs(np.asarray(eps)).mean() > 0.5  # x_t = eps: pure noise


def test_the_likelihood_of_a_zero_terminal_snr_model_is_finite(tiny):
  """The probability-flow likelihood runs on the VP SDE, querying the schedule at equal log-SNR (t_from_log_snr):
  finite bits/dim for the mixture's exact v-model, whatever the last step's -inf."""
  from diffusion_jax import sample
  from diffusion_jax.likelihood import bits_per_dim
  config = tiny(**{"diffusion.zero_terminal_snr": True, "diffusion.prediction": "v"})
  fn, sde, prediction = sample.on_sampler_process(config, mixture_model_fn(ZERO, "v"), ZERO, "ode", "v")
  x = jax.random.normal(jax.random.PRNGKey(3), (64, 2)) * 0.3 + MEANS[0]
  bpd, _ = jax.jit(lambda x: bits_per_dim(fn, sde, x, jax.random.PRNGKey(4), prediction=prediction, rtol=1e-3,
                                          atol=1e-3))(x)
  assert np.isfinite(np.asarray(bpd)).all()


def test_a_zero_terminal_snr_run_trains_and_samples(tiny, tmp_path):
  """configs/digits_ztsnr.py's settings on the tiny model: training with v and min-SNR weighting, then sampling from
  t = T (trailing), finite; eps prediction, an SDE and a weighting undefined at SNR 0 are refused."""
  from diffusion_jax import build, parallel, sample, train
  from configs.digits_ztsnr import get_config
  ztsnr = get_config()
  config = tiny(**{"diffusion.zero_terminal_snr": True, "diffusion.prediction": "v", "training.weighting": "min_snr",
                   "sample.spacing": "trailing", "training.num_steps": 3})
  assert ztsnr.diffusion.zero_terminal_snr and ztsnr.diffusion.prediction == "v"
  state = train.train(config, str(tmp_path))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  model, process = build.setup(config)
  images = sample.generate_samples(config, model, process, state.ema_params, mesh, "ddim", 5, 8,
                                   jax.random.PRNGKey(0))[0]
  assert np.isfinite(images).all()
  for over, message in (({"diffusion.prediction": "eps"}, "needs prediction v or x0"),
                        ({"diffusion.sde": "vp"}, "rescales a discrete schedule"),
                        ({"training.weighting": "likelihood"}, "valid there: uniform, p2, min_snr")):
    with pytest.raises(ValueError, match=message):
      build.setup(tiny(**{"diffusion.zero_terminal_snr": True, "diffusion.prediction": "v", **over}))
