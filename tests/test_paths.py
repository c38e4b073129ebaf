"""The Gaussian-path contract (paths.py): the SDE derived from alpha and sigma alone reproduces the closed forms of
Song et al. 2021, each path's log-SNR inverts, and each path's marginals are those of its SDE, by Monte Carlo."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.paths import CosineInterpolant, GaussianPath, RectifiedFlow, VarianceExploding
from diffusion_jax.schedules import get_schedule
from diffusion_jax.sde import (SDES, VESDE, CosineInterpolantSDE, RectifiedFlowSDE, SubVPSDE, VPSDE, get_sde,
                              sde_from_config)

T = jnp.linspace(0.02, 0.98, 25)


def general(path, t):
  """(f, g^2) by the general formula of GaussianPath, whatever closed form the path overrides it with."""
  return GaussianPath.drift_diffusion(path, t)


def test_general_sde_reproduces_vp_and_subvp_closed_forms():
  # Song et al. 2021, eqs. 11 and 12: VP f = -beta / 2, g^2 = beta; sub-VP g^2 = beta (1 - exp(-2 int_0^t beta))
  for sde in (VPSDE(), SubVPSDE()):
    f, g2 = general(sde, T)
    drift, g = sde.sde(jnp.ones_like(T), T)  # closed forms, in sde.py
    np.testing.assert_allclose(f, drift, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g2, jnp.square(g), rtol=1e-4, atol=1e-6)
  beta = 0.1 + T * 19.9
  np.testing.assert_allclose(general(SubVPSDE(), T)[1], beta * (1 - jnp.exp(-2 * (0.1 * T + 9.95 * T**2))), rtol=1e-4)
  np.testing.assert_allclose(general(VPSDE(), T)[1], beta, rtol=1e-4)


@pytest.mark.parametrize("path", [VESDE(), VarianceExploding(0.002, 80.0), RectifiedFlow(),
                                  RectifiedFlowSDE(shift=3.0)], ids=["ve", "edm", "rf", "rf_shift3"])
def test_closed_form_sdes_equal_the_general_formula(path):
  f, g2 = path.drift_diffusion(T)
  f_general, g2_general = general(path, T)
  np.testing.assert_allclose(f, f_general, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(g2, g2_general, rtol=1e-4)


def test_cosine_interpolant_sde_by_jax_equals_its_closed_form():
  f, g2 = general(CosineInterpolant(), T)  # f = -pi/2 tan(pi t / 2), g^2 = pi tan(pi t / 2) (by hand)
  np.testing.assert_allclose(f, -0.5 * np.pi * jnp.tan(0.5 * np.pi * T), rtol=1e-4)
  np.testing.assert_allclose(g2, np.pi * jnp.tan(0.5 * np.pi * T), rtol=1e-4)


PATHS_UNDER_TEST = {"linear": get_schedule("linear", 1000), **{name: get_sde(name) for name in SDES.names()},
                    "rectified_flow_shift3": RectifiedFlowSDE(shift=3.0),
                    "cosine_interpolant_shift0.5": CosineInterpolantSDE(shift=0.5)}


@pytest.mark.parametrize("name", list(PATHS_UNDER_TEST))
def test_t_from_log_snr_inverts_log_snr(name):
  path = PATHS_UNDER_TEST[name]
  t = jnp.linspace(0.05, 0.95, 19)
  np.testing.assert_allclose(path.t_from_log_snr(path.log_snr(t)), t, atol=2e-4)
  lam = path.log_snr(t)  # closed forms agree with the general bisection
  np.testing.assert_allclose(GaussianPath.t_from_log_snr(path, lam), t, atol=2e-4)


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "rectified_flow", "edm", "cosine_interpolant"])
def test_marginals_match_monte_carlo_samples_of_the_sde(name):
  # Euler-Maruyama from x_0 (two data points) at t = 0 to t_end, 20000 paths: mean alpha x_0, std sigma
  path = PATHS_UNDER_TEST[name]
  t_end, steps, n = 0.7, 1400, 20000
  x0 = jnp.array([1.5, -0.5])
  key0, key = jax.random.split(jax.random.PRNGKey(0))
  alpha0, sigma0 = path.alpha_sigma(jnp.float32(0.0))
  x = alpha0 * x0 + sigma0 * jax.random.normal(key0, (n, 2))
  dt = t_end / steps

  def step(x, xs):
    t, k = xs
    drift, g = path.sde(x, jnp.full((n,), t))
    return x + drift * dt + g[:, None] * jnp.sqrt(dt) * jax.random.normal(k, x.shape), None
  x, _ = jax.jit(lambda x: jax.lax.scan(step, x, (jnp.arange(steps) * dt, jax.random.split(key, steps))))(x)
  alpha, sigma = path.alpha_sigma(jnp.float32(t_end))
  scale = float(sigma) / np.sqrt(n)  # the Monte-Carlo standard error of the mean
  np.testing.assert_allclose(x.mean(0), alpha * x0, atol=5 * scale + 2e-3 * float(sigma))
  np.testing.assert_allclose(x.std(0), sigma, rtol=0.02)


def test_bad_path_input_says_what_is_valid(tiny):
  from diffusion_jax import build, checkpoint
  with pytest.raises(ValueError, match="valid SDEs: cosine_interpolant, edm, rectified_flow, subvp, ve, vp"):
    build.setup(tiny(**{"diffusion.sde": "flow"}))
  with pytest.raises(ValueError, match="needs a continuous path: set diffusion.sde"):
    build.setup(tiny(**{"diffusion.prediction": "velocity"}))
  with pytest.raises(ValueError, match="needs the edm or ve path"):
    build.setup(tiny(**{"diffusion.sde": "vp", "model.precondition": "edm"}))
  with pytest.raises(ValueError, match="prediction 'v' assumes alpha.2 \\+ sigma.2 = 1, which the 'rectified_flow'"):
    build.setup(tiny(**{"diffusion.sde": "rectified_flow", "diffusion.prediction": "v"}))
  build.setup(tiny(**{"diffusion.sde": "cosine_interpolant", "diffusion.prediction": "v"}))  # variance preserving
  import json
  saved = json.loads(tiny(**{"diffusion.sde": "rectified_flow"}).to_json())
  with pytest.raises(ValueError, match="diffusion.sde: checkpoint has 'rectified_flow', config has 'edm'"):
    checkpoint.check_compatible(saved, tiny(**{"diffusion.sde": "edm"}))


def test_preconditioning_and_velocity_weightings_refuse_what_they_cannot_do(tiny):
  from diffusion_jax import build
  with pytest.raises(ValueError, match="needs the edm or ve path and prediction x0"):
    build.setup(tiny(**{"diffusion.sde": "edm", "model.precondition": "edm"}))  # eps target
  with pytest.raises(ValueError, match="with the velocity target use uniform"):
    build.setup(tiny(**{"diffusion.sde": "rectified_flow", "diffusion.prediction": "velocity",
                        "training.weighting": "min_snr"}))
  with pytest.raises(ValueError, match="non-monotone"):
    build.setup(tiny(**{"diffusion.sde": "rectified_flow", "training.t_sampling": "mode", "training.mode_scale": 3.0}))


def test_pc_refuses_a_path_whose_diffusion_would_be_imaginary():
  from diffusion_jax.samplers import get_sampler
  from diffusion_jax.sde import InterpolantSDE

  class Sharpening(InterpolantSDE):  # sigma falls after t = 0.5: the log-SNR rises there, g^2 < 0
    def alpha_sigma(self, t):
      t = jnp.asarray(t, jnp.float32)
      return jnp.ones_like(t), 0.1 + t * (1.0 - t)
  with pytest.raises(ValueError, match=r"g\(t\)\^2 = -sigma\^2 dlambda/dt is negative for t in \[0.50"):
    get_sampler("pc")(lambda x, t, y=None: x, Sharpening(), (2, 2), jax.random.PRNGKey(0), num_steps=10,
                      predictor="euler_maruyama", corrector="none")


def test_a_checkpoint_refuses_another_schedule_or_step_count(tiny):
  import json
  from diffusion_jax import checkpoint
  saved = json.loads(tiny().to_json())
  with pytest.raises(ValueError, match="diffusion.schedule: checkpoint has 'linear', config has 'cosine'"):
    checkpoint.check_compatible(saved, tiny(**{"diffusion.schedule": "cosine"}))
  with pytest.raises(ValueError, match="diffusion.num_timesteps: checkpoint has 1000, config has 500"):
    checkpoint.check_compatible(saved, tiny(**{"diffusion.num_timesteps": 500}))


def test_shifted_flow_paths_equal_their_closed_forms():
  # SD3 (Esser et al. 2024, eq. 23): sigma = s t / (1 + (s - 1) t) on rectified flow; on any path the shift moves the
  # log-SNR by -2 log s; the cosine interpolant stays variance preserving; shifts multiply
  s, t = 3.0, jnp.linspace(0.0, 1.0, 11)
  alpha, sigma = RectifiedFlowSDE(shift=s).alpha_sigma(t)
  np.testing.assert_allclose(sigma, s * t / (1 + (s - 1) * t), rtol=1e-6)
  np.testing.assert_allclose(alpha, 1 - s * t / (1 + (s - 1) * t), atol=1e-6)
  inner = jnp.linspace(0.05, 0.95, 19)
  for base, shifted in ((RectifiedFlowSDE(), RectifiedFlowSDE(shift=s)),
                        (CosineInterpolantSDE(), CosineInterpolantSDE(shift=s))):
    np.testing.assert_allclose(shifted.log_snr(inner), base.log_snr(inner) - 2 * np.log(s), rtol=1e-5, atol=1e-5)
  a, b = CosineInterpolantSDE(shift=s).alpha_sigma(t)
  np.testing.assert_allclose(a**2 + b**2, 1.0, rtol=1e-6)
  np.testing.assert_allclose(b, s * np.sin(np.pi * t / 2) / np.sqrt(np.cos(np.pi * t / 2)**2
                                                                    + s**2 * np.sin(np.pi * t / 2)**2), atol=1e-6)
  twice = RectifiedFlowSDE(shift=2.0).alpha_sigma(jnp.asarray(RectifiedFlowSDE(shift=1.5).alpha_sigma(inner)[1]))[1]
  np.testing.assert_allclose(twice, RectifiedFlowSDE(shift=3.0).alpha_sigma(inner)[1], rtol=1e-6)


def test_path_specs_take_the_resolution_shift(tiny):
  from diffusion_jax import build
  d = tiny().diffusion  # 8 x 8 images
  assert sde_from_config(d, "rectified_flow:shift=3").shift == 3.0
  assert sde_from_config(d, "rectified_flow:base=4", resolution=8).shift == 2.0  # sqrt(64 / 16) pixels
  assert sde_from_config(d, "cosine_interpolant:base=16", resolution=8).shift == 0.5
  assert sde_from_config(d, "rectified_flow").shift == 1.0
  _, process = build.setup(tiny(**{"diffusion.sde": "rectified_flow:base=2"}))
  assert process.shift == 4.0 and process.with_steps(10).shift == 4.0
  with pytest.raises(ValueError, match="Path option 'shift=2' of 'vp': valid options are none"):
    sde_from_config(d, "vp:shift=2")
  with pytest.raises(ValueError, match="option 'scale=2' of 'rectified_flow': valid options are shift=1.0, base=0"):
    sde_from_config(d, "rectified_flow:scale=2")
  with pytest.raises(ValueError, match="sets both shift= and base="):
    sde_from_config(d, "rectified_flow:shift=2:base=4", resolution=8)
  with pytest.raises(ValueError, match="shift must be > 0, got -1"):
    sde_from_config(d, "rectified_flow:shift=-1")


def test_stochastic_samplers_refuse_a_path_with_only_an_ode(tiny, monkeypatch):
  # a plugin path whose sigma falls after t = 0.5: the log-SNR rises there, the reverse SDE's noise variance is
  # negative, so the stochastic samplers (ddpm, ddim eta > 0, sde_dpm_solver++, euler_ancestral, pc, edm with churn)
  # are refused by name while the deterministic ones run
  from diffusion_jax import build, parallel, sample
  from diffusion_jax.samplers import get_sampler
  from diffusion_jax.samplers.common import check_reverse_noise
  from diffusion_jax.sde import InterpolantSDE

  class Sharpening(InterpolantSDE):
    def alpha_sigma(self, t):
      t = jnp.asarray(t, jnp.float32)
      return jnp.ones_like(t), 0.1 + t * (1.0 - t)
  monkeypatch.setitem(SDES._items, "sharpening_test_path", Sharpening)  # for this test only
  config = tiny(**{"diffusion.sde": "sharpening_test_path"})
  model, process = build.setup(config)
  mesh = parallel.make_mesh()
  valid = r"the deterministic samplers ddim, deis, dpm_solver\+\+, dpm_solver\+\+_2s, edm, flow, ode, unipc"
  for name, options in (("sde_dpm_solver++", {}), ("ddim", {"eta": 1.0}), ("euler_ancestral", {}), ("ddpm", {})):
    with pytest.raises(ValueError, match=rf"Sampler '{re.escape(name)}' with .* draws the reverse SDE's noise, whose "
                                         rf"variance -sigma\^2 dlambda/dt is negative .* valid: {valid}"):
      sample.make_generate(config, model, process, mesh, name, 4, 2, **options)
  sample.make_generate(config, model, process, mesh, "ddim", 4, 2)  # eta = 0: deterministic
  with pytest.raises(ValueError, match=r"'pc' with its defaults .*\(from t = 0.50"):
    check_reverse_noise("pc", Sharpening(), {})
  check_reverse_noise("sde_dpm_solver++", get_schedule("linear", 1000), {})  # a falling log-SNR
  assert [get_sampler("edm").stochastic(o) for o in ({}, {"s_churn": 40.0})] == [False, True]
