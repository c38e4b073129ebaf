import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.losses import (WEIGHTINGS, diffusion_loss, eps_loss_factor, example_keys, get_weighting,
                                  importance_t, likelihood)
from diffusion_jax.parametrization import target, to_eps_x0
from diffusion_jax.schedules import Schedule, get_schedule
from diffusion_jax.sde import VPSDE


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_target_and_inverse(prediction):
  rng = np.random.default_rng(0)
  x0, eps = rng.standard_normal((2, 5, 3))
  alpha = np.sqrt(0.3)
  sigma = np.sqrt(0.7)
  x_t = alpha * x0 + sigma * eps
  e, x = to_eps_x0(target(x0, eps, alpha, sigma, prediction), x_t, alpha, sigma, prediction)
  np.testing.assert_allclose(e, eps, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(x, x0, rtol=1e-6, atol=1e-6)


def test_v_definition():
  v = target(np.array(2.0), np.array(3.0), 0.6, 0.8, "v")
  assert v == pytest.approx(0.6 * 3.0 - 0.8 * 2.0)  # v = alpha eps - sigma x0


def test_bad_prediction_name():
  with pytest.raises(ValueError, match="eps, x0, v"):
    target(1.0, 1.0, 0.5, 0.5, "score")


def test_diffusion_loss_of_exact_eps_model_is_zero():
  """A model that returns the true noise (recovered from x_t and x0) has zero loss; a zero model has loss ~ 1."""
  sched = get_schedule("linear", 1000)
  x0 = jax.random.normal(jax.random.PRNGKey(0), (64, 4, 4, 1))

  def oracle(variables, x_t, index, y, train, rngs):
    alpha, sigma = sched.alpha_sigma(sched.index_to_t(index))
    return (x_t - alpha[:, None, None, None] * x0) / sigma[:, None, None, None]

  loss, aux = diffusion_loss(oracle, {}, sched, x0, None, jax.random.PRNGKey(1), prediction="eps", weighting="uniform")
  assert float(loss) < 1e-6 and aux["per_example"].shape == (64,)
  zero = lambda variables, x_t, *a, **k: jnp.zeros_like(x_t)
  loss, _ = diffusion_loss(zero, {}, sched, x0, None, jax.random.PRNGKey(1), prediction="eps", weighting="uniform")
  assert 0.8 < float(loss) < 1.2


# ---- timestep weightings (functions of the SNR) ----

LOG_SNR = jnp.array([-6.0, -1.0, 0.0, 1.5, 4.0, 8.0])
SNR = np.exp(np.asarray(LOG_SNR, np.float64))
OPTIONS = types.SimpleNamespace(p2_gamma=0.5, p2_k=1.0, min_snr_gamma=5.0)


def weight(name, prediction, options=OPTIONS, dlog_snr_dt=None):
  dlog = jnp.full_like(LOG_SNR, -3.0) if dlog_snr_dt is None else dlog_snr_dt
  return np.asarray(WEIGHTINGS.get(name)(LOG_SNR, prediction, dlog, options), np.float64)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_weightings_against_their_formulas(prediction):
  eps_factor = {"eps": 1.0, "x0": 1.0 / SNR, "v": 1.0 + 1.0 / SNR}[prediction]  # target loss / eps loss
  np.testing.assert_array_equal(weight("uniform", prediction), np.ones(6))
  np.testing.assert_allclose(weight("p2", prediction), (1.0 + SNR) ** -0.5, rtol=1e-5)  # Choi et al. eq. 8
  k2 = types.SimpleNamespace(p2_gamma=1.0, p2_k=2.0, min_snr_gamma=5.0)
  np.testing.assert_allclose(weight("p2", prediction, k2), 1.0 / (2.0 + SNR), rtol=1e-5)
  # Hang et al. 2023: min(SNR, 5) on the x0 loss; / SNR on eps; / (SNR + 1) on v
  expected = {"eps": np.minimum(SNR, 5) / SNR, "x0": np.minimum(SNR, 5), "v": np.minimum(SNR, 5) / (SNR + 1)}
  np.testing.assert_allclose(weight("min_snr", prediction), expected[prediction], rtol=1e-5)
  np.testing.assert_allclose(weight("likelihood", prediction), 3.0 / eps_factor, rtol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_weighting_limits_equal_uniform(prediction):
  """P2 with gamma = 0 is uniform exactly; min-SNR with gamma -> inf is L_simple: uniform on the eps loss, exactly for
  eps, and min(SNR, inf) = SNR on the x0 loss, SNR / (SNR + 1) on the v loss, i.e. weight 1 on their eps loss."""
  gamma0 = types.SimpleNamespace(p2_gamma=0.0, p2_k=1.0, min_snr_gamma=5.0)
  np.testing.assert_array_equal(weight("p2", prediction, gamma0), weight("uniform", prediction))
  inf = types.SimpleNamespace(p2_gamma=1.0, p2_k=1.0, min_snr_gamma=float("inf"))
  eps_factor = np.asarray(eps_loss_factor(LOG_SNR, prediction), np.float64)
  if prediction == "eps":
    np.testing.assert_array_equal(weight("min_snr", prediction, inf), weight("uniform", prediction))
  np.testing.assert_allclose(weight("min_snr", prediction, inf) * eps_factor, np.ones(6), rtol=1e-5)


def double_weight(log_snr, prediction, dlog_snr_dt, options):
  """A user-defined weighting, selected as training.weighting='test_losses:double_weight'."""
  return 2.0 * jnp.ones_like(log_snr)


def test_weighting_names():
  assert get_weighting("test_losses:double_weight") is double_weight
  with pytest.raises(ValueError, match="valid weightings: edm, likelihood, min_snr, p2, sigmoid, uniform"):
    get_weighting("p3")
  with pytest.raises(ValueError, match="cannot import 'nothing' from 'test_losses'"):
    get_weighting("test_losses:nothing")


@pytest.mark.parametrize("process", [get_schedule("linear", 1000), VPSDE()], ids=["schedule", "vp_sde"])
def test_importance_sampling_of_t_is_unbiased_and_reduces_variance(process):
  """t ~ p(t) proportional to the likelihood weighting, weighted w u / p: the mean of w(t) f(t) equals the one under
  uniform t (an exact sum over the T times, or a fine quadrature on the SDE), with a smaller spread."""

  def w_fn(t):
    log_snr, dlog_snr_dt = jax.jvp(process.log_snr, (t,), (jnp.ones_like(t),))
    return likelihood(log_snr, "eps", dlog_snr_dt, None)
  f = lambda t: jnp.sin(3.0 * t) + 1.5  # a stand-in per-example loss
  t, w = importance_t(process, example_keys(jax.random.PRNGKey(0), jnp.arange(200_000)), w_fn)
  if isinstance(process, Schedule):
    grid = process.index_to_t(jnp.arange(1000))
    assert set(np.unique(np.asarray(t))) <= set(np.asarray(grid))
  else:
    grid = jnp.linspace(process.t_min, 1.0, 200_001)
    assert float(t.min()) >= process.t_min and float(t.max()) <= 1.0
  exact = float(jnp.mean(w_fn(grid) * f(grid)))
  assert float(jnp.mean(w * f(t))) == pytest.approx(exact, rel=0.01)
  uniform_t = process.sample_t(jax.random.PRNGKey(1), 200_000)
  assert float(jnp.std(w * f(t))) < 0.5 * float(jnp.std(w_fn(uniform_t) * f(uniform_t)))
