"""The Gaussian-path contract (paths.py): the SDE derived from alpha and sigma alone reproduces the closed forms of
Song et al. 2021, each path's log-SNR inverts, and each path's marginals are those of its SDE, by Monte Carlo."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.paths import CosineInterpolant, GaussianPath, RectifiedFlow, VarianceExploding
from diffusion_jax.schedules import get_schedule
from diffusion_jax.sde import SDES, VESDE, SubVPSDE, VPSDE, get_sde

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


@pytest.mark.parametrize("path", [VESDE(), VarianceExploding(0.002, 80.0), RectifiedFlow()], ids=["ve", "edm", "rf"])
def test_closed_form_sdes_equal_the_general_formula(path):
  f, g2 = path.drift_diffusion(T)
  f_general, g2_general = general(path, T)
  np.testing.assert_allclose(f, f_general, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(g2, g2_general, rtol=1e-4)


def test_cosine_interpolant_sde_by_jax_equals_its_closed_form():
  f, g2 = general(CosineInterpolant(), T)  # f = -pi/2 tan(pi t / 2), g^2 = pi tan(pi t / 2) (by hand)
  np.testing.assert_allclose(f, -0.5 * np.pi * jnp.tan(0.5 * np.pi * T), rtol=1e-4)
  np.testing.assert_allclose(g2, np.pi * jnp.tan(0.5 * np.pi * T), rtol=1e-4)


PATHS_UNDER_TEST = {"linear": get_schedule("linear", 1000), **{name: get_sde(name) for name in SDES.names()}}


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
