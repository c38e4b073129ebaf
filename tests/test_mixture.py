"""Every sampler against a Gaussian mixture, whose noisy score is known in closed form: the samples must reproduce
the mixture's weights, mean and covariance within Monte Carlo error; and the probability-flow ODE solvers must
converge at their order (Euler 1, Heun 2) as steps grow."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.evaluation.gaussian_mixture import GaussianMixture
from diffusion_jax.samplers import get_sampler
from diffusion_jax.schedules import get_schedule
from diffusion_jax.sde import VESDE, SubVPSDE, VPSDE

WEIGHTS = jnp.array([0.5, 0.3, 0.2])
MEANS = jnp.array([[-1.5, 0.0], [1.5, 0.5], [0.0, 2.0]])
STD = 0.3  # isotropic component standard deviation
N = 4000


MIXTURE = GaussianMixture(np.asarray(WEIGHTS), np.asarray(MEANS), STD)


def mixture_model_fn(process, prediction="eps"):
  """The mixture's exact prediction on `process` (evaluation/gaussian_mixture.py): p_t = sum_k w_k N(alpha mu_k,
  (alpha^2 s^2 + sigma^2) I), eps = -sigma grad log p_t from the components' posteriors."""
  return MIXTURE.model_fn(process, prediction)


def check_mixture(x):
  x = np.asarray(x, np.float64)
  assert np.isfinite(x).all()
  nearest = np.argmin(((x[:, None] - np.asarray(MEANS)[None]) ** 2).sum(-1), axis=1)
  weights = np.bincount(nearest, minlength=3) / len(x)
  # binomial standard error of a weight: sqrt(0.25 / 4000) = 0.008; the components overlap by < 0.1%
  np.testing.assert_allclose(weights, WEIGHTS, atol=0.03)
  mean = np.asarray(WEIGHTS @ MEANS)
  second = sum(w * (np.outer(m, m) + STD**2 * np.eye(2)) for w, m in zip(np.asarray(WEIGHTS), np.asarray(MEANS)))
  np.testing.assert_allclose(x.mean(0), mean, atol=0.06)
  np.testing.assert_allclose(np.cov(x, rowvar=False), second - np.outer(mean, mean), atol=0.1)


LINEAR = get_schedule("linear", 1000)


@pytest.mark.parametrize("name,process,steps,kwargs", [
    ("ddpm", LINEAR, 1000, {"variance": "beta_tilde"}),
    ("ddim", LINEAR, 100, {"eta": 0.0}),
    ("ddim", get_schedule("cosine", 1000), 200, {"eta": 1.0}),
    ("dpm_solver++", LINEAR, 50, {}),
    ("dpm_solver++", LINEAR, 20, {"order": 3}),
    ("dpm_solver++_2s", LINEAR, 30, {}),
    ("sde_dpm_solver++", LINEAR, 100, {}),
    ("euler_ancestral", LINEAR, 200, {}),
    ("unipc", LINEAR, 20, {}),
    ("unipc", LINEAR, 20, {"variant": "bh1", "order": 3}),
    ("deis", LINEAR, 20, {"order": 3}),
    ("edm", LINEAR, 40, {}),
    ("pc", VPSDE(), 1000, {"predictor": "euler_maruyama", "corrector": "none"}),
    ("pc", SubVPSDE(), 1000, {"predictor": "euler_maruyama", "corrector": "none"}),
    ("pc", VESDE(), 1000, {"predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16}),
    ("ode", VPSDE(), 20, {"solver": "dopri5", "rtol": 1e-4, "atol": 1e-4}),
    ("ode", VESDE(), 20, {"solver": "dopri5", "rtol": 1e-4, "atol": 1e-4}),
    ("ode", SubVPSDE(), 200, {"solver": "heun"}),
], ids=lambda v: v if isinstance(v, (str, int)) else type(v).__name__)
def test_sampler_reproduces_mixture(name, process, steps, kwargs):
  fn = jax.jit(functools.partial(get_sampler(name), mixture_model_fn(process), process, (N, 2), num_steps=steps,
                                 **kwargs))
  check_mixture(fn(jax.random.PRNGKey(0)))


def test_ode_euler_and_heun_converge_at_their_order():
  """Error against a tight RK45 solve from the same x_T: halving the step size halves Euler's error and quarters
  Heun's (global orders 1 and 2)."""
  sde = VPSDE()
  model = mixture_model_fn(sde)

  def run(solver, n, **kw):
    fn = functools.partial(get_sampler("ode"), model, sde, (256, 2), num_steps=n, solver=solver, denoise=False, **kw)
    return np.asarray(jax.jit(fn)(jax.random.PRNGKey(3)), np.float64)

  ref = run("dopri5", 50, rtol=1e-7, atol=1e-7)
  err = lambda solver, n: np.abs(run(solver, n) - ref).mean()
  e_euler = [err("euler", n) for n in (50, 100, 200)]
  e_heun = [err("heun", n) for n in (25, 50, 100)]
  assert e_euler[0] > e_euler[1] > e_euler[2] and e_heun[0] > e_heun[1] > e_heun[2]
  assert 1.6 < e_euler[1] / e_euler[2] < 2.5, e_euler
  assert 3.0 < e_heun[1] / e_heun[2] < 5.0, e_heun


def test_oracle_mmd_uses_the_exact_kernel_expectations_of_the_mixture():
  # MMD^2 against the mixture's closed forms equals the plain U-statistic against a large exact sample (its own
  # estimate of the mixture terms has std ~ 1e-4 here); exact samples score ~0, a 0.1 shift clearly not
  x = np.asarray(MIXTURE.sample(jax.random.PRNGKey(1), 1500), np.float64) + 0.1
  y = np.asarray(MIXTURE.sample(jax.random.PRNGKey(2), 3000), np.float64)
  k = lambda a, b: np.exp(-0.5 * ((a[:, None] - b[None]) ** 2).sum(-1) / 0.5**2)
  u = lambda a: (k(a, a).sum() - len(a)) / (len(a) * (len(a) - 1))
  brute = u(x) - 2 * k(x, y).mean() + u(y)
  assert brute > 0.01
  np.testing.assert_allclose(MIXTURE.mmd2(x, 0.5, block=512), brute, rtol=0.05)
  assert abs(MIXTURE.mmd2(y, 0.5)) < 1e-3
  mean, cov = MIXTURE.moments()
  np.testing.assert_allclose(y.mean(0), mean, atol=0.05)
  np.testing.assert_allclose(np.cov(y, rowvar=False), cov, atol=0.08)
  assert MIXTURE.mode_weight_error(y) < 0.03


def test_euler_ancestral_is_ddpm_ancestral_sampling():
  # with eta = 1, k-diffusion's ancestral Euler step (x0 + sigma_down / sigma (x - x0) + sigma_up z, sigma_down =
  # sigma_next^2 / sigma) is the DDPM posterior q(x_s | x_t, x0) with the beta-tilde variance, in VE variables: on one
  # grid, from the same x_T and noise, the two samplers coincide
  run = lambda name: jax.jit(functools.partial(get_sampler(name), mixture_model_fn(LINEAR), LINEAR, (512, 2),
                                               num_steps=10, spacing="trailing"))(jax.random.PRNGKey(3))
  ddpm, euler_a = run("ddpm"), run("euler_ancestral")
  np.testing.assert_allclose(euler_a, ddpm, atol=2e-4 * float(jnp.max(jnp.abs(ddpm))))
