"""Score SDEs and their samplers against closed forms: Gaussian data have exact scores."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.samplers import get_sampler
from diffusion_jax.samplers.ode import ode_sample
from diffusion_jax.schedules import get_schedule
from diffusion_jax.sde import VESDE, SubVPSDE, VPSDE, get_sde
from test_samplers import COV, MU, gaussian_model_fn


def test_vp_marginal_matches_ddpm_schedule():
  """The VP SDE with beta 0.1..20 is the continuous limit of Ho et al.'s linear schedule. Tolerance, derived:
  log alpha_bar_i = sum_{j<=i} log(1 - beta_j) and log alpha(t_i)^2 = -int_0^{t_i} beta(s) ds differ by (a) the
  Riemann-sum error |sum_j beta_j - int beta| and (b) the second-order term, |log(1 - b) + b| <= b^2 / (2 (1 - b));
  by the mean value theorem |alpha_bar_i - alpha(t_i)^2| <= max(alpha_bar_i, alpha(t_i)^2) ((a) + (b)), plus float32
  rounding. The bound peaks at 1.6e-3 (mid-schedule); the actual gap is at most 8.1e-4."""
  sde, sched = VPSDE(), get_schedule("linear", 1000)
  t = (np.arange(1000) + 1.0) / 1000
  alpha, sigma = sde.alpha_sigma(jnp.asarray(t, jnp.float32))
  b = np.linspace(1e-4, 0.02, 1000)  # Ho et al.'s betas, in float64
  log_abar, log_a2 = np.cumsum(np.log1p(-b)), -(0.1 * t + 0.5 * 19.9 * t**2)
  bound = np.exp(np.maximum(log_abar, log_a2)) * (np.abs(np.cumsum(b) + log_a2) + np.cumsum(b**2 / (2 * (1 - b))))
  gap = np.abs(np.asarray(alpha, np.float64) ** 2 - np.asarray(sched.alphas_cumprod, np.float64))
  assert np.all(gap <= bound + 1e-6), np.max(gap - bound)
  assert gap.max() > 1e-4  # the two processes do differ: the bound is not vacuous
  np.testing.assert_allclose(sde.discrete_betas, sched.betas, rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)


def test_subvp_and_ve_marginals():
  t = jnp.array([0.1, 0.5, 1.0])
  a_vp, s_vp = VPSDE().alpha_sigma(t)
  a_sub, s_sub = SubVPSDE().alpha_sigma(t)
  np.testing.assert_allclose(a_sub, a_vp)
  np.testing.assert_allclose(s_sub, s_vp**2, rtol=1e-5)  # sub-VP std = 1 - alpha^2 = sigma_VP^2
  ve = VESDE(0.01, 50.0)
  np.testing.assert_allclose(ve.alpha_sigma(t)[1], 0.01 * 5000.0**t, rtol=1e-5)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()])
def test_marginal_variance_solves_the_forward_sde(sde):
  """d Var/dt = 2 f'(t) Var + g^2 for the linear SDEs, with Var = sigma_t^2 for x0 = 0;
  checked by finite differences."""
  t, h = jnp.array([0.3, 0.7]), 1e-3
  var = lambda t: sde.alpha_sigma(t)[1] ** 2
  x = jnp.ones((2, 1))
  drift, g = sde.sde(x, t)
  fprime = drift[:, 0]  # the drift is linear in x: f(x, t) = f'(t) x
  np.testing.assert_allclose((var(t + h) - var(t - h)) / (2 * h), 2 * fprime * var(t) + g**2, rtol=2e-3)


def test_prior_logp_is_the_gaussian_density():
  z = jnp.array([[0.5, -1.0]])
  np.testing.assert_allclose(VPSDE().prior_logp(z), -np.log(2 * np.pi) - 0.5 * 1.25, rtol=1e-6)
  ve = VESDE(sigma_max=3.0)
  np.testing.assert_allclose(ve.prior_logp(z), -np.log(2 * np.pi * 9.0) - 1.25 / 18.0, rtol=1e-6)


@pytest.mark.parametrize("sde,kwargs", [
    (VPSDE(), dict(predictor="euler_maruyama", corrector="none")),
    (VPSDE(), dict(predictor="ancestral", corrector="langevin", snr=0.01)),
    (VPSDE(), dict(predictor="reverse_diffusion", corrector="none")),
    (SubVPSDE(), dict(predictor="euler_maruyama", corrector="none")),
    (VESDE(), dict(predictor="reverse_diffusion", corrector="langevin", snr=0.16)),
    (VESDE(), dict(predictor="ancestral", corrector="none")),
])
def test_pc_sampler_recovers_gaussian(sde, kwargs):
  fn = jax.jit(functools.partial(get_sampler("pc"), gaussian_model_fn(sde), sde, (8000, 2), num_steps=1000,
                                 **kwargs))  # default eps: 1e-3 (VP, sub-VP), 1e-5 (VE)
  x = np.asarray(fn(jax.random.PRNGKey(0)))
  np.testing.assert_allclose(x.mean(0), MU, atol=0.05)
  np.testing.assert_allclose(np.cov(x, rowvar=False), COV, atol=0.05)


@pytest.mark.parametrize("sde,solver,steps", [
    (VPSDE(), "dopri5", 20), (SubVPSDE(), "dopri5", 20), (VESDE(), "dopri5", 20), (VPSDE(), "heun", 100),
    (VPSDE(), "euler", 500)])
def test_probability_flow_ode_recovers_gaussian(sde, solver, steps):
  eps = 1e-5 if isinstance(sde, VESDE) else 1e-3
  fn = jax.jit(functools.partial(ode_sample, gaussian_model_fn(sde, "v" if solver == "heun" else "eps"), sde, (4000, 2),
                                 num_steps=steps, solver=solver, eps=eps, return_nfe=True,
                                 prediction="v" if solver == "heun" else "eps"))
  x, nfe = fn(jax.random.PRNGKey(1))
  x = np.asarray(x)
  np.testing.assert_allclose(x.mean(0), MU, atol=0.05)
  np.testing.assert_allclose(np.cov(x, rowvar=False), COV, atol=0.05)
  if solver == "dopri5":
    assert 20 < int(nfe) < 2000
  else:
    assert int(nfe) == steps * (2 if solver == "heun" else 1) + 1


def test_ode_is_deterministic_map_of_the_prior():
  sde = VPSDE()
  fn = jax.jit(functools.partial(ode_sample, gaussian_model_fn(sde), sde, (16, 2), num_steps=20))
  np.testing.assert_array_equal(fn(jax.random.PRNGKey(3)), fn(jax.random.PRNGKey(3)))


def test_ode_step_limit_raises():
  sde = VPSDE()
  fn = jax.jit(functools.partial(ode_sample, gaussian_model_fn(sde), sde, (16, 2), num_steps=2, rtol=1e-9, atol=1e-9,
                                 max_steps=3))
  with pytest.raises(Exception, match="maximum number of solver steps"):
    jax.block_until_ready(fn(jax.random.PRNGKey(0)))


def test_bad_names():
  with pytest.raises(ValueError, match="valid SDEs: cosine_interpolant, edm, rectified_flow, subvp, ve, vp"):
    get_sde("vpp")
  with pytest.raises(ValueError, match="valid solvers"):
    ode_sample(None, VPSDE(), (2, 2), jax.random.PRNGKey(0), num_steps=2, solver="rk4")
  with pytest.raises(ValueError, match="valid predictors"):
    get_sampler("pc")(gaussian_model_fn(VPSDE()), VPSDE(), (2, 2), jax.random.PRNGKey(0), num_steps=2, predictor="x")
  with pytest.raises(ValueError, match="needs an SDE"):
    get_sampler("pc")(None, get_schedule("linear", 10), (2, 2), jax.random.PRNGKey(0), num_steps=2)


@pytest.mark.parametrize("sde,kwargs", [
    (VPSDE(), dict(predictor="reverse_diffusion", corrector="none")),
    (VPSDE(), dict(predictor="ancestral", corrector="langevin", snr=0.01)),
    (VESDE(), dict(predictor="reverse_diffusion", corrector="langevin", snr=0.16)),
])
def test_pc_with_fewer_steps_than_the_training_discretisation(sde, kwargs):
  """With num_steps < N the discretisation-based predictors use the SDE discretised into num_steps steps."""
  fn = jax.jit(functools.partial(get_sampler("pc"), gaussian_model_fn(sde), sde, (8000, 2), num_steps=100, **kwargs))
  x = np.asarray(fn(jax.random.PRNGKey(0)))
  np.testing.assert_allclose(x.mean(0), MU, atol=0.05)
  np.testing.assert_allclose(np.cov(x, rowvar=False), COV, atol=0.05)


def test_pc_vp_discretisation_needs_enough_steps():
  sde = VPSDE()
  with pytest.raises(ValueError, match="needs num_steps > beta_max = 20"):
    get_sampler("pc")(gaussian_model_fn(sde), sde, (8, 2), jax.random.PRNGKey(0), num_steps=20)
  get_sampler("pc")(gaussian_model_fn(sde), sde, (8, 2), jax.random.PRNGKey(0), num_steps=20,
                    predictor="euler_maruyama", corrector="none")
