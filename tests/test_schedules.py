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
  with pytest.raises(ValueError, match="cosine, interpolated_cosine, linear, scaled_linear, shifted_cosine, sigmoid"):
    get_schedule("quadratic", 10)


def test_sigmoid_matches_chen_2023():
  T, start, end, tau = 1000, -3.0, 3.0, 1.0
  s = get_schedule("sigmoid", T)
  sig = lambda z: 1 / (1 + np.exp(-z))
  t = (np.arange(T - 5) + 1) / T
  f = (sig(end / tau) - sig((t * (end - start) + start) / tau)) / (sig(end / tau) - sig(start / tau))
  np.testing.assert_allclose(s.alphas_cumprod[: T - 5], f, rtol=1e-4, atol=1e-6)


def cosine_lambda(t, lo=-15.0, hi=15.0):
  """Simple diffusion's clipped cosine log-SNR, written out: alpha = cos(pi t / 2) between the clipping points."""
  a, b = np.arctan(np.exp(-hi / 2)), np.arctan(np.exp(-lo / 2))
  return -2 * np.log(np.tan(a + t * (b - a)))


def grid_log_snr(s):
  abar = np.asarray(s.alphas_cumprod, np.float64)
  return np.log(abar) - np.log1p(-abar)


def test_shifted_and_interpolated_cosine_schedules_match_simple_diffusion():
  """Hoogeboom et al. 2023: lambda(t) + 2 log(base / resolution), and t lambda_32(t) + (1 - t) lambda_256(t); at
  base = resolution the cosine log-SNR itself: alpha_bar = sigmoid(-2 log tan theta) = cos^2 theta, theta running
  from t_min to t_max (cos(pi t / 2) but for the clipping)."""
  T, t = 1000, np.arange(1, 1001) / 1000
  inner = slice(10, 990)  # float32 alpha_bar resolves log-SNR to 1e-3 away from the ends
  plain = get_schedule("shifted_cosine", T, resolution=64)
  np.testing.assert_allclose(grid_log_snr(plain)[inner], cosine_lambda(t)[inner], atol=2e-3)
  a, b = np.arctan(np.exp(-7.5)), np.arctan(np.exp(7.5))
  np.testing.assert_allclose(np.asarray(plain.alphas_cumprod), np.cos(a + t * (b - a)) ** 2, atol=1e-6)
  shifted = get_schedule("shifted_cosine:base=32", T, resolution=128)
  np.testing.assert_allclose((grid_log_snr(shifted) - grid_log_snr(plain))[inner], 2 * np.log(32 / 128), atol=2e-3)
  interp = get_schedule("interpolated_cosine", T, resolution=512)
  expected = t * (cosine_lambda(t) + 2 * np.log(32 / 512)) + (1 - t) * (cosine_lambda(t) + 2 * np.log(256 / 512))
  np.testing.assert_allclose(grid_log_snr(interp)[inner], expected[inner], atol=2e-3)
  with pytest.raises(ValueError, match="valid options are resolution=64, base=64"):
    get_schedule("shifted_cosine:bas=32", T)


def test_shifted_schedule_takes_the_resolution_of_the_data_or_latents(tiny):
  from diffusion_jax import build
  _, schedule = build.setup(tiny(**{"diffusion.schedule": "shifted_cosine:base=4"}))  # 4 / 8 = 64 / 128
  np.testing.assert_allclose(np.asarray(schedule.alphas_cumprod),
                             np.asarray(get_schedule("shifted_cosine", 1000, resolution=128).alphas_cumprod), atol=1e-7)
