"""Targets and preconditioning: eps / x0 / v / velocity convert into each other on every path (flow_matching's
AffineProbPath as the oracle on the conditional OT path), and EDM's scalings equal k-diffusion's."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import random_params
from diffusion_jax.models.precondition import EDMPrecond, edm_scalings
from diffusion_jax.parametrization import PREDICTIONS, path_coefficients, target, to_eps_x0
from diffusion_jax.paths import CosineInterpolant, RectifiedFlow
from diffusion_jax.sde import VPSDE


PATHS = {"rf": RectifiedFlow(), "cosine": CosineInterpolant(), "vp": VPSDE()}


@pytest.mark.parametrize("name,prediction", [(n, p) for n in PATHS for p in PREDICTIONS if (n, p) != ("rf", "v")])
def test_every_target_converts_back_to_eps_and_x0(name, prediction):  # v assumes alpha^2 + sigma^2 = 1: not on rf
  path = PATHS[name]
  k0, k1 = jax.random.split(jax.random.PRNGKey(0))
  x0, eps = jax.random.normal(k0, (5, 3)), jax.random.normal(k1, (5, 3))
  t = jnp.linspace(0.1, 0.9, 5)[:, None]
  alpha, sigma, dalpha, dsigma = path_coefficients(path, t)
  x_t = alpha * x0 + sigma * eps
  pred = target(x0, eps, alpha, sigma, prediction, dalpha, dsigma)
  eps_hat, x0_hat = to_eps_x0(pred, x_t, alpha, sigma, prediction, dalpha, dsigma)
  np.testing.assert_allclose(eps_hat, eps, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(x0_hat, x0, rtol=1e-4, atol=1e-4)


def test_conversions_equal_flow_matching_on_the_conditional_ot_path():
  # flow_matching's time runs the other way (X_0 noise, X_1 data: t_fm = 1 - t), so its velocity is minus ours
  from flow_matching.path import AffineProbPath
  from flow_matching.path.scheduler import CondOTScheduler
  fm = AffineProbPath(scheduler=CondOTScheduler())
  rng = np.random.default_rng(0)
  x0, eps = rng.standard_normal((6, 4)).astype(np.float32), rng.standard_normal((6, 4)).astype(np.float32)
  t = np.linspace(0.05, 0.95, 6).astype(np.float32)
  tt = lambda a: torch.from_numpy(np.asarray(a))
  sample = fm.sample(x_0=tt(eps), x_1=tt(x0), t=tt(1 - t))
  alpha, sigma, dalpha, dsigma = (np.asarray(a)[:, None] for a in path_coefficients(RectifiedFlow(), t))
  x_t = alpha * x0 + sigma * eps
  np.testing.assert_allclose(sample.x_t.numpy(), x_t, rtol=1e-5, atol=1e-6)
  u = np.asarray(target(x0, eps, alpha, sigma, "velocity", dalpha, dsigma))
  np.testing.assert_allclose(-sample.dx_t.numpy(), u, rtol=1e-5, atol=1e-6)
  t_fm, xt = tt(1 - t)[:, None], tt(x_t)  # broadcast against x_t, as the conversions need
  ours = lambda pred, kind: [np.asarray(a) for a in to_eps_x0(pred, x_t, alpha, sigma, kind, dalpha, dsigma)]
  for got, want in [(ours(u, "velocity")[1], fm.velocity_to_target(tt(-u), xt, t_fm)),
                    (ours(u, "velocity")[0], fm.velocity_to_epsilon(tt(-u), xt, t_fm)),
                    (ours(eps, "eps")[1], fm.epsilon_to_target(tt(eps), xt, t_fm)),
                    (ours(x0, "x0")[0], fm.target_to_epsilon(tt(x0), xt, t_fm)),
                    (-np.asarray(target(*ours(eps, "eps")[::-1], alpha, sigma, "velocity", dalpha, dsigma)),
                     fm.epsilon_to_velocity(tt(eps), xt, t_fm)),
                    (-np.asarray(target(*ours(x0, "x0")[::-1], alpha, sigma, "velocity", dalpha, dsigma)),
                     fm.target_to_velocity(tt(x0), xt, t_fm))]:
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)


def test_edm_scalings_equal_k_diffusion():
  from k_diffusion_oracle import load
  denoiser = load("layers").Denoiser(None, sigma_data=0.5)
  sigma = np.logspace(-3, 2, 41)
  c_skip, c_out, c_in, c_noise = (np.asarray(a) for a in edm_scalings(jnp.asarray(sigma, jnp.float32), 0.5))
  for ours, ref in zip((c_skip, c_out, c_in), denoiser.get_scalings(torch.from_numpy(sigma))):
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)
  np.testing.assert_allclose(c_noise, np.log(sigma) / 4, rtol=1e-6, atol=1e-7)  # k-diffusion's models take ln(sigma)/4


def test_edm_precond_of_a_zero_backbone_is_the_bayes_denoiser_of_gaussian_data(tiny):
  # data N(0, sigma_data^2 I): E[x_0 | x_0 + sigma n = x] = sigma_data^2 / (sigma^2 + sigma_data^2) x = c_skip x,
  # so the ideal F is 0, and any backbone's output enters scaled by c_out
  from diffusion_jax.models import get_model
  backbone = get_model(tiny())
  model = EDMPrecond(backbone, sigma_data=0.5)
  x, sigma = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1)), jnp.array([0.01, 0.5, 40.0])
  y = jnp.array([1, 2, 3])
  params = random_params(model, x, sigma, y)
  assert set(params) == {"backbone"}
  zero = jax.tree.map(jnp.zeros_like, params)
  bayes = 0.25 / (sigma**2 + 0.25)[:, None, None, None] * x
  np.testing.assert_allclose(model.apply({"params": zero}, x, sigma, y), bayes, rtol=1e-6)
  c_skip, c_out, c_in, c_noise = edm_scalings(sigma, 0.5)
  f = backbone.apply({"params": params["backbone"]}, c_in[:, None, None, None] * x, c_noise, y)
  np.testing.assert_allclose(model.apply({"params": params}, x, sigma, y),
                             c_skip[:, None, None, None] * x + c_out[:, None, None, None] * f, rtol=1e-5, atol=1e-6)
