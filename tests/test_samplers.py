import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.parametrization import target
from diffusion_jax.samplers import SAMPLERS, get_sampler, parse_runs
from diffusion_jax.samplers.common import samplers_on
from diffusion_jax.samplers.common import respace
from diffusion_jax.samplers.ddim import ddim_step
from diffusion_jax.samplers.ddpm import ddpm_step
from diffusion_jax.schedules import get_schedule

MU = jnp.array([1.0, -0.5])
COV = jnp.array([[0.5, 0.2], [0.2, 0.3]])


def gaussian_model_fn(schedule, prediction="eps"):
  """Exact prediction for x0 ~ N(MU, COV): E[eps | x_t] = sigma Cov_t^{-1} (x_t - alpha MU),
  Cov_t = alpha^2 COV + sigma^2 I."""
  def model_fn(x, t, y=None):
    alpha, sigma = schedule.alpha_sigma(t)
    a, s = alpha[:, None, None], sigma[:, None, None]
    cov_t = a**2 * COV + s**2 * jnp.eye(2)
    eps = sigma[:, None] * jnp.linalg.solve(cov_t, (x - alpha[:, None] * MU)[..., None])[..., 0]
    x0 = (x - sigma[:, None] * eps) / alpha[:, None]
    return target(x0, eps, alpha[:, None], sigma[:, None], prediction)
  return model_fn


@pytest.fixture(scope="module")
def schedule():
  return get_schedule("linear", 1000)


@pytest.mark.parametrize("name,steps,kwargs,prediction", [
    ("ddpm", 1000, {"variance": "beta_tilde"}, "eps"),
    ("ddpm", 1000, {"variance": "beta"}, "eps"),
    ("ddpm", 1000, {}, "x0"),
    ("ddpm", 100, {"variance": "beta"}, "eps"),
    ("ddim", 50, {"eta": 0.0}, "eps"),
    ("ddim", 1000, {"eta": 1.0}, "v"),
    ("ddim", 100, {"eta": 0.0}, "v"),
    ("ddim", 250, {"eta": 0.5}, "x0"),
])
def test_sampler_recovers_gaussian(schedule, name, steps, kwargs, prediction):
  sampler = get_sampler(name)
  fn = jax.jit(functools.partial(sampler, gaussian_model_fn(schedule, prediction), schedule, (8000, 2),
                                 num_steps=steps, prediction=prediction, **kwargs))
  x = np.asarray(fn(jax.random.PRNGKey(0)))
  np.testing.assert_allclose(x.mean(0), MU, atol=0.04)
  np.testing.assert_allclose(np.cov(x, rowvar=False), COV, atol=0.04)


def test_ddim_eta1_full_grid_equals_ddpm_step(schedule):
  rng = np.random.default_rng(0)
  x, x0, z = (jnp.asarray(rng.standard_normal((16, 3))) for _ in range(3))
  for i in [999, 500, 10, 1]:
    abar, abar_prev = schedule.alphas_cumprod[i], schedule.alphas_cumprod[i - 1]
    eps = (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1 - abar)
    a = ddim_step(x0, eps, abar, abar_prev, z, eta=1.0)
    b = ddpm_step(x, x0, abar, abar_prev, z, variance="beta_tilde")
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_ddpm_step_matches_ho_eps_form(schedule):
  """Ho et al. Alg. 2: x_{t-1} = (x_t - beta/sqrt(1 - abar) eps) / sqrt(alpha) + sigma z."""
  rng = np.random.default_rng(1)
  x, eps, z = (jnp.asarray(rng.standard_normal((16, 3))) for _ in range(3))
  i = 400
  abar, abar_prev = schedule.alphas_cumprod[i], schedule.alphas_cumprod[i - 1]
  beta = 1 - abar / abar_prev
  x0 = (x - jnp.sqrt(1 - abar) * eps) / jnp.sqrt(abar)
  expected = (x - beta / jnp.sqrt(1 - abar) * eps) / jnp.sqrt(1 - beta) + jnp.sqrt(beta) * z
  np.testing.assert_allclose(ddpm_step(x, x0, abar, abar_prev, z, variance="beta"), expected, rtol=1e-4, atol=1e-4)


def test_respacing():
  np.testing.assert_array_equal(respace(1000, 10, "leading"), np.arange(900, -1, -100))
  np.testing.assert_array_equal(respace(1000, 10, "trailing"), np.arange(999, 0, -100))
  np.testing.assert_array_equal(respace(1000, 1000, "leading"), np.arange(999, -1, -1))
  with pytest.raises(ValueError, match="num_steps must be in"):
    respace(1000, 2000)
  # DDIM's CIFAR-10 grid: (k sqrt(800) / 9)^2 for k = 9..0, truncated: 800, 632.1, 483.95, ..., 9.88, 0
  np.testing.assert_array_equal(respace(1000, 10, "quadratic"), [800, 632, 483, 355, 246, 158, 88, 39, 9, 0])
  with pytest.raises(ValueError, match="valid spacings"):
    respace(1000, 10, "cubic")


def test_parse_runs_and_errors():
  assert parse_runs("ddpm:1000, ddim:50:eta=0.5") == [("ddpm", 1000, {}), ("ddim", 50, {"eta": 0.5})]
  with pytest.raises(ValueError, match="valid samplers: ddim, ddpm"):
    parse_runs("euler:10")
  with pytest.raises(ValueError, match="name:num_steps"):
    parse_runs("ddim")


@pytest.mark.parametrize("name,steps,kwargs,prediction", [
    ("dpm_solver++", 20, {}, "eps"),
    ("dpm_solver++", 60, {"spacing": "linspace"}, "v"),
    ("edm", 40, {}, "eps"),
    ("edm", 40, {"s_churn": 10.0}, "x0"),
])
def test_fast_solvers_recover_gaussian(schedule, name, steps, kwargs, prediction):
  fn = jax.jit(functools.partial(get_sampler(name), gaussian_model_fn(schedule, prediction), schedule, (8000, 2),
                                 num_steps=steps, prediction=prediction, **kwargs))
  x = np.asarray(fn(jax.random.PRNGKey(0)))
  np.testing.assert_allclose(x.mean(0), MU, atol=0.04)
  np.testing.assert_allclose(np.cov(x, rowvar=False), COV, atol=0.04)


def test_karras_sigmas_follow_rho_schedule():
  from diffusion_jax.samplers.edm import karras_sigmas
  s = np.asarray(karras_sigmas(0.002, 80.0, 18))
  assert s[0] == pytest.approx(80.0, rel=1e-5) and s[17] == pytest.approx(0.002, rel=1e-4) and s[18] == 0
  np.testing.assert_allclose(s[:18] ** (1 / 7), np.linspace(80 ** (1 / 7), 0.002 ** (1 / 7), 18), rtol=1e-5)


def test_t_from_log_snr_inverts_log_snr(schedule):
  t = jnp.linspace(0.01, 1.0, 37)
  np.testing.assert_allclose(schedule.t_from_log_snr(schedule.log_snr(t)), t, atol=1e-5)


def test_convergence_order(schedule):
  """Against a 1000-step DDIM reference from the same x_T: DDIM is first order, DPM-Solver++(2M) and EDM-Heun second."""
  model = gaussian_model_fn(schedule)

  def run(name, n, **kw):
    fn = functools.partial(get_sampler(name), model, schedule, (512, 2), num_steps=n, **kw)
    return np.asarray(jax.jit(fn)(jax.random.PRNGKey(5)))

  ref = run("ddim", 1000)
  ratio = lambda name, **kw: np.abs(run(name, 24, **kw) - ref).mean() / np.abs(run(name, 48, **kw) - ref).mean()
  assert 1.5 < ratio("ddim", spacing="linspace") < 2.6
  assert ratio("dpm_solver++", spacing="linspace") > 3.0
  assert ratio("edm") > 3.0


def test_samplers_describe_their_process_and_network_evaluations():
  nfe = lambda name, steps, options: get_sampler(name).nfe(steps, options)
  assert nfe("ddpm", 10, {}) == 10 and nfe("edm", 3, {}) == 5
  assert nfe("pc", 4, {"corrector": "none"}) == 4 and nfe("pc", 4, {"n_corrector_steps": 2}) == 12
  assert nfe("ode", 3, {"solver": "heun"}) == 7 and nfe("ode", 3, {"solver": "euler", "denoise": False}) == 3
  assert nfe("ode", 3, {}) is None  # dopri5 counts its own
  assert samplers_on("sde") == ["flow", "ode", "pc"]
  assert {"ddpm", "ddim", "dpm_solver++", "edm"} <= set(samplers_on("schedule"))
  assert [n for n in SAMPLERS.names() if get_sampler(n).mean_shift_guidance] == ["ddpm"]

