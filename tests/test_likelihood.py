"""Probability-flow likelihood against the exact density of Gaussian data."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from diffusion_jax.likelihood import bits_per_dim, dequantize, log_likelihood
from diffusion_jax.sde import SubVPSDE, VPSDE
from test_samplers import COV, MU, gaussian_model_fn


@pytest.mark.parametrize("sde,probe", [(VPSDE(), "exact"), (SubVPSDE(), "exact"), (VPSDE(), "rademacher")])
def test_ode_likelihood_equals_gaussian_density(sde, probe):
  eps = 1e-5
  x = jnp.asarray(np.random.default_rng(0).multivariate_normal(np.asarray(MU), np.asarray(COV), 64), jnp.float32)
  alpha, sigma = (float(a) for a in sde.alpha_sigma(jnp.array(eps)))
  exact = scipy.stats.multivariate_normal(alpha * np.asarray(MU),
                                          alpha**2 * np.asarray(COV) + sigma**2 * np.eye(2)).logpdf(x)
  fn = jax.jit(functools.partial(log_likelihood, gaussian_model_fn(sde), sde, probe=probe, eps=eps))
  if probe == "exact":
    logp, nfe = fn(x, jax.random.PRNGKey(0))
    np.testing.assert_allclose(logp, exact, atol=0.03)
  else:  # Hutchinson is unbiased: average the estimate over probes
    logp = np.mean([np.asarray(fn(x, jax.random.PRNGKey(i))[0]) for i in range(64)], axis=0)
    np.testing.assert_allclose(logp.mean(), exact.mean(), atol=0.05)
    nfe = 7
  assert int(nfe) > 6


def test_bits_per_dim_matches_closed_form():
  """bpd = -log2 p(x_deq) / D + log2(256 / 2) for 8-bit data in [-1, 1], with p the exact Gaussian density at eps."""
  sde, eps, rng = VPSDE(), 1e-5, jax.random.PRNGKey(3)
  raw = np.random.default_rng(1).multivariate_normal(np.asarray(MU), np.asarray(COV), 32)
  k = np.clip(np.round((raw + 1) / 2 * 255), 0, 255)  # 8-bit pixel levels
  x = jnp.asarray(2 * k / 255 - 1, jnp.float32)
  bpd, _ = bits_per_dim(gaussian_model_fn(sde), sde, x, rng, num_bins=256, probe="exact", eps=eps)
  x_deq = np.asarray(dequantize(x, jax.random.split(rng)[0], 256))
  np.testing.assert_array_equal(np.floor((x_deq + 1) / 2 * 256), k)  # each value stays in its own bin
  alpha, sigma = (float(a) for a in sde.alpha_sigma(jnp.array(eps)))
  logp = scipy.stats.multivariate_normal(alpha * np.asarray(MU),
                                         alpha**2 * np.asarray(COV) + sigma**2 * np.eye(2)).logpdf(x_deq)
  np.testing.assert_allclose(bpd, -logp / (2 * np.log(2)) + 7.0, atol=0.03)


def test_bad_probe():
  with pytest.raises(ValueError, match="valid probes"):
    log_likelihood(None, VPSDE(), jnp.zeros((1, 2)), jax.random.PRNGKey(0), probe="hutch")
