"""Training-time distributions (timesteps.py) and the effective weighting over log-SNR (losses.effective_weighting):
each named formulation's w(lambda) has the closed form of Kingma & Gao 2023, Table 1."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffusion_jax.losses import effective_weighting
from diffusion_jax.paths import CosineInterpolant, RectifiedFlow, VarianceExploding
from diffusion_jax.sde import VPSDE
from diffusion_jax.timesteps import LogitNormal, LogNormalSigma, Mode, Uniform, get_time_sampling

OPTIONS = ml_collections.ConfigDict(dict(sigma_data=0.5, sigmoid_bias=-1.0))
LAM = jnp.linspace(-6.0, 6.0, 49)


def proportional(a, b, rtol=2e-3):
  """a = c b for one constant c > 0 over the grid."""
  ratio = np.asarray(a) / np.asarray(b)
  assert ratio.min() > 0 and ratio.max() / ratio.min() - 1 < rtol, (ratio.min(), ratio.max())


@pytest.mark.parametrize("name,formulation,closed_form", [
    ("eps, cosine (IDDPM)", (CosineInterpolant(), Uniform(0.0), "uniform", "eps"), lambda lam: 1 / np.cosh(lam / 2)),
    ("v, cosine", (CosineInterpolant(), Uniform(0.0), "uniform", "v"), lambda lam: np.exp(-lam / 2)),
    ("flow matching, OT path", (RectifiedFlow(), Uniform(0.0), "uniform", "velocity"), lambda lam: np.exp(-lam / 2)),
    ("EDM", (VarianceExploding(0.002, 80.0), LogNormalSigma(-1.2, 1.2), "edm", "x0"),
     lambda lam: np.exp(-0.5 * ((lam - 2.4) / 2.4) ** 2) * (np.exp(-lam) + 0.25)),
    ("ELBO (VDM)", (VPSDE(), Uniform(0.0), "likelihood", "eps"), lambda lam: np.ones_like(lam)),
    ("sigmoid, b = -1", (VPSDE(), Uniform(0.0), "sigmoid", "eps"), lambda lam: 1 / (1 + np.exp(lam + 1.0))),
    ("ELBO on the v loss", (CosineInterpolant(), Uniform(0.0), "likelihood", "v"), lambda lam: np.ones_like(lam)),
])
def test_effective_weighting_has_kingma_and_gao_closed_form(name, formulation, closed_form):
  path, sampling, weighting, prediction = formulation
  lam = LAM if not isinstance(path, VPSDE) else jnp.linspace(-9.0, 9.0, 49)  # within VP's log-SNR range
  w = effective_weighting(path, sampling, weighting, prediction, OPTIONS, lam)
  proportional(w, closed_form(np.asarray(lam)))


@pytest.mark.parametrize("sampling", [LogitNormal(0.0, 1.0), LogitNormal(0.5, 0.6), Mode(1.29), Mode(-0.5)],
                         ids=["logit_normal(0,1)", "logit_normal(0.5,0.6)", "mode(1.29)", "mode(-0.5)"])
def test_time_samples_follow_their_density(sampling):
  t = np.asarray(sampling.sample(jax.random.PRNGKey(0), 200_000, RectifiedFlow()))
  edges = np.linspace(0.0, 1.0, 21)
  hist, _ = np.histogram(t, edges, density=True)
  fine = jnp.linspace(1e-4, 1 - 1e-4, 20_001)
  density = np.asarray(sampling.density(fine))
  assert abs(np.trapezoid(density, np.asarray(fine)) - 1.0) < 2e-3
  expected = [np.mean(density[(fine >= a) & (fine < b)]) for a, b in zip(edges[:-1], edges[1:])]
  np.testing.assert_allclose(hist, expected, rtol=0.05, atol=0.02)


def test_lognormal_sigma_gives_the_edm_noise_levels_on_any_path():
  for path in (VarianceExploding(0.002, 80.0), RectifiedFlow()):
    t = LogNormalSigma(-1.2, 1.2).sample(jax.random.PRNGKey(1), 100_000, path)
    alpha, sigma = path.alpha_sigma(t)
    log_sigma = np.log(np.asarray(sigma / alpha))
    inside = (log_sigma > np.log(0.002) + 0.01) & (log_sigma < np.log(80.0) - 0.01)  # the VE path clamps its range
    assert abs(log_sigma[inside].mean() + 1.2) < 0.02 and abs(log_sigma[inside].std() - 1.2) < 0.02


def test_bad_time_sampling_input_says_what_is_valid():
  with pytest.raises(ValueError, match="valid time samplings: logit_normal, lognormal_sigma, mode, uniform"):
    get_time_sampling("beta")
  with pytest.raises(ValueError, match="non-monotone"):
    Mode(2.0)
