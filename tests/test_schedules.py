import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.schedules import get_schedule


def test_linear_matches_ho_et_al():
  s = get_schedule("linear", 1000)
  betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
  np.testing.assert_allclose(s.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-5)
  assert s.alphas_cumprod[0] == pytest.approx(0.9999, abs=1e-7)
  assert s.alphas_cumprod[-1] == pytest.approx(4.036e-5, rel=1e-3)  # the well-known alpha_bar_T of DDPM
  np.testing.assert_allclose(s.betas, betas, rtol=1e-3, atol=1e-6)


def test_cosine_matches_nichol_dhariwal():
  T, sh = 1000, 0.008
  s = get_schedule("cosine", T)
  f = lambda t: np.cos((t / T + sh) / (1 + sh) * np.pi / 2) ** 2
  # before the 0.999 clip (which only bites at the very end) alpha_bar_i = f(i + 1) / f(0)
  i = np.arange(T - 5)
  np.testing.assert_allclose(s.alphas_cumprod[: T - 5], f(i + 1) / f(0), rtol=1e-5, atol=1e-7)
  assert float(s.betas.max()) == pytest.approx(0.999, abs=1e-6)
  assert float(s.betas[-1]) == pytest.approx(0.999, abs=1e-6)


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_continuous_view_matches_grid(name):
  s = get_schedule(name, 100)
  t = (jnp.arange(100) + 1.0) / 100
  alpha, sigma = s.alpha_sigma(t)
  np.testing.assert_allclose(alpha**2, s.alphas_cumprod, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
  lam = s.log_snr(jnp.linspace(0.01, 1.0, 500))
  assert np.all(np.diff(np.asarray(lam)) <= 1e-6), "log-SNR must decrease with t"
  np.testing.assert_allclose(s.log_snr(t), np.log(s.alphas_cumprod / (1 - s.alphas_cumprod)), rtol=1e-4, atol=1e-4)


def test_log_snr_interpolates_between_grid_points():
  s = get_schedule("linear", 10)
  lam = np.log(s.alphas_cumprod / (1 - s.alphas_cumprod))
  assert float(s.log_snr(0.25)) == pytest.approx(0.5 * (lam[1] + lam[2]), rel=1e-5)  # index 1.5


def test_unknown_schedule_lists_valid_names():
  with pytest.raises(ValueError, match="cosine, linear, scaled_linear, sigmoid"):
    get_schedule("quadratic", 10)


def test_sigmoid_matches_chen_2023():
  T, start, end, tau = 1000, -3.0, 3.0, 1.0
  s = get_schedule("sigmoid", T)
  sig = lambda z: 1 / (1 + np.exp(-z))
  t = (np.arange(T - 5) + 1) / T
  f = (sig(end / tau) - sig((t * (end - start) + start) / tau)) / (sig(end / tau) - sig(start / tau))
  np.testing.assert_allclose(s.alphas_cumprod[: T - 5], f, rtol=1e-4, atol=1e-6)
