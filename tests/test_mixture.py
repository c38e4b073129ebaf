"""Every sampler against a Gaussian mixture, whose noisy score is known in closed form: the samples must reproduce
the mixture's weights, mean and covariance within Monte Carlo error; and the probability-flow ODE solvers must
converge at their order (Euler 1, Heun 2) as steps grow."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.parametrization import target
from diffusion_jax.samplers import get_sampler
from diffusion_jax.schedules import get_schedule
from diffusion_jax.sde import VESDE, SubVPSDE, VPSDE

WEIGHTS = jnp.array([0.5, 0.3, 0.2])
MEANS = jnp.array([[-1.5, 0.0], [1.5, 0.5], [0.0, 2.0]])
STD = 0.3  # isotropic component standard deviation
N = 4000


def mixture_model_fn(process, prediction="eps"):
  """Exact E[eps | x_t] for x0 ~ sum_k w_k N(mu_k, s^2 I): p_t = sum_k w_k N(alpha mu_k, (alpha^2 s^2 + sigma^2) I),
  eps = -sigma grad log p_t = sigma sum_k r_k(x) (x - alpha mu_k) / (alpha^2 s^2 + sigma^2), r_k the posterior."""
  def model_fn(x, t, y=None):
    alpha, sigma = process.alpha_sigma(t)
    a, s = alpha[:, None, None], sigma[:, None, None]
    var = a**2 * STD**2 + s**2                      # [B, 1, 1]
    diff = x[:, None, :] - a * MEANS[None]            # [B, K, 2]
    logits = jnp.log(WEIGHTS) - 0.5 * jnp.sum(diff**2, -1) / var[..., 0] - jnp.log(var[..., 0])
    r = jax.nn.softmax(logits, axis=-1)[..., None]
    eps = sigma[:, None] * jnp.sum(r * diff / var, axis=1)
    x0 = (x - sigma[:, None] * eps) / alpha[:, None]
    return target(x0, eps, alpha[:, None], sigma[:, None], prediction)
  return model_fn


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
