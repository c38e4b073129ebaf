"""DDPM++ / NCSN++ networks, continuous-time SDE training with the likelihood weighting, and sampling of
SDE-trained models (which samplers apply to which SDE)."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import build, parallel, train
from diffusion_jax.losses import WEIGHTINGS, diffusion_loss
from diffusion_jax.models.ncsnpp import FIRDownConv, _depthwise, _fir_kernel, fir_downsample, fir_upsample
from diffusion_jax.sample import generate_samples
from diffusion_jax.schedules import get_schedule
from diffusion_jax.sde import VESDE, SubVPSDE, VPSDE, on_sde

# Published sizes of the score-SDE CIFAR-10 models (Song et al. 2021; counted in Karras et al. 2022, Table 7):
# DDPM++ cont. 61.8M (VP and sub-VP), NCSN++ cont. 62.8M (VE).
PUBLISHED = {"vp/cifar10_ddpmpp_continuous": 61.8e6, "subvp/cifar10_ddpmpp_continuous": 61.8e6,
             "ve/cifar10_ncsnpp_continuous": 62.8e6}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_score_sde_configs_match_published_parameter_counts(name):
  config = importlib.import_module("configs." + name.replace("/", ".")).get_config()
  model, process = build.setup(config)
  assert config.diffusion.sde == name.split("/")[0] and type(process).__name__.lower().startswith(config.diffusion.sde)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.ones((1,))))
  n = sum(x.size for x in jax.tree.leaves(shapes))
  assert abs(n / PUBLISHED[name] - 1) < 0.02, n


def _upfirdn_reference(x, k, up, down, pad0, pad1):
  """upfirdn2d of Karras et al. (StyleGAN2) written out with loops on one [H, W] channel: zero-insert, pad, FIR
  (true convolution), keep every `down`-th sample."""
  h, w = x.shape
  u = np.zeros((h * up, w * up))
  u[::up, ::up] = x
  u = np.pad(u, ((pad0, pad1), (pad0, pad1)))
  kf = k[::-1, ::-1]
  kh = k.shape[0]
  out = np.array([[np.sum(u[i:i + kh, j:j + kh] * kf) for j in range(u.shape[1] - kh + 1)]
                  for i in range(u.shape[0] - kh + 1)])
  return out[::down, ::down]


def test_fir_resampling_matches_upfirdn():
  x = np.random.default_rng(0).standard_normal((1, 8, 8, 1)).astype(np.float32)
  k = _fir_kernel((1, 3, 3, 1))
  np.testing.assert_allclose(fir_downsample(jnp.asarray(x))[0, ..., 0],
                             _upfirdn_reference(x[0, ..., 0], k, 1, 2, 1, 1), atol=1e-5)
  np.testing.assert_allclose(fir_upsample(jnp.asarray(x))[0, ..., 0],
                             _upfirdn_reference(x[0, ..., 0], 4 * k, 2, 1, 2, 1), atol=1e-5)
  # the blur of the FIR down-convolution: pad (2, 2) for a 3x3 convolution (score_sde's upfirdn2d pad)
  np.testing.assert_allclose(_depthwise(jnp.asarray(x), k, (1, 1), ((2, 2), (2, 2)))[0, ..., 0],
                             _upfirdn_reference(x[0, ..., 0], k, 1, 1, 2, 2), atol=1e-5)
  y, _ = FIRDownConv(5).init_with_output(jax.random.PRNGKey(0), jnp.asarray(x))
  assert y.shape == (1, 4, 4, 5)


SDES = [VPSDE(), SubVPSDE(), VESDE()]


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_likelihood_weighting_is_g2_over_sigma2(sde):
  """-d log_snr / dt = g(t)^2 / sigma_t^2 (Song et al. 2021b's lambda = g^2 on the score loss, in eps units)."""
  t = jnp.array([0.01, 0.1, 0.5, 0.9, 1.0])
  lam, dlam = jax.jvp(sde.log_snr, (t,), (jnp.ones_like(t),))
  _, g = sde.sde(jnp.zeros((5, 1)), t)
  _, sigma = sde.alpha_sigma(t)
  w = WEIGHTINGS.get("likelihood")(lam, "eps", dlam, None)
  np.testing.assert_allclose(w, g**2 / sigma**2, rtol=2e-3)
  np.testing.assert_allclose(WEIGHTINGS.get("likelihood")(lam, "x0", dlam, None), g**2 / sigma**2 * jnp.exp(lam),
                             rtol=2e-3)


def test_sde_training_times_and_network_time():
  rng = jax.random.PRNGKey(0)
  t = VPSDE().sample_t(rng, 10_000)
  assert float(t.min()) >= 1e-5 and float(t.max()) <= 1.0 and abs(float(t.mean()) - 0.5) < 0.01
  np.testing.assert_allclose(VPSDE().network_time(jnp.array([1.0])), [999.0])
  np.testing.assert_allclose(VESDE().network_time(jnp.array([0.0, 1.0])), [0.01, 50.0], rtol=1e-5)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_continuous_loss_of_exact_eps_is_zero(sde):
  x0 = jax.random.normal(jax.random.PRNGKey(0), (64, 4, 4, 1))

  def oracle(variables, x_t, time, y, train, rngs):  # recovers eps from x_t and x0 at the sampled t
    alpha, sigma = sde.alpha_sigma(time)
    return (x_t - alpha[:, None, None, None] * x0) / sigma[:, None, None, None]

  sde_t = type("P", (), {})()  # the SDE whose network sees t itself, so the oracle knows the sampled t
  for name in ("alpha_sigma", "log_snr", "sample_t"):
    setattr(sde_t, name, getattr(sde, name))
  sde_t.network_time = lambda t: t
  for weighting in ("uniform", "likelihood"):
    loss, _ = diffusion_loss(oracle, {}, sde_t, x0, None, jax.random.PRNGKey(1), prediction="eps", weighting=weighting)
    assert float(loss) < 1e-5


def test_discrete_model_on_vp_sde_sees_matching_noise_level():
  """on_sde queries a DDPM model at the schedule time of equal log-SNR; for the linear schedule that is the SDE time
  itself up to the difference of the two processes: log alpha_bar_i = sum log(1 - beta_j) = -sum beta_j - 1/2 sum
  beta_j^2 - ..., so the discrete log alpha_bar lags the SDE's by <= 1/2 sum beta_j^2 = 0.067 at t = 1, a time shift of
  0.067 / |d log alpha^2 / dt| = 0.067 / beta(1) = 3.4e-3: tolerance 4e-3."""
  sched, sde = get_schedule("linear", 1000), VPSDE()
  seen = {}
  fn = on_sde(lambda x, t, y=None: seen.setdefault("t", t), sched, sde)
  t = jnp.linspace(0.05, 1.0, 20)
  fn(None, t)
  np.testing.assert_allclose(sched.log_snr(seen["t"]), sde.log_snr(t), atol=1e-3)
  np.testing.assert_allclose(seen["t"], t, atol=4e-3)


def tiny_ncsnpp(tiny, sde, **overrides):
  return tiny(**{"diffusion.sde": sde, "model.name": "ncsnpp", "training.num_steps": 3,
                 "training.checkpoint_every": 3, **overrides})


def test_ve_ncsnpp_trains_and_samples(tiny, tmp_path):
  """Continuous-time VE training of a tiny NCSN++ (FIR, residual input pyramid, Fourier features), likelihood
  weighting, then pc and ode sampling, and DDIM on the VE path's variance-preserving view."""
  import ml_collections
  from configs.score_sde import get_score_sde_config
  config = tiny(**{"diffusion.sde": "ve", "training.num_steps": 3, "training.checkpoint_every": 3,
                   "training.weighting": "likelihood"})
  model = get_score_sde_config("ve").model
  model.update(dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), fir=True,
                    embedding_type="fourier", progressive_input="residual", num_classes=10, dropout=0.0))
  config.model = ml_collections.ConfigDict(model.to_dict())
  state = train.train(config, str(tmp_path))
  assert int(state.step) == 3
  model, process = build.setup(config)
  assert isinstance(process, VESDE)
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  for name, steps, kw in [("pc", 4, {}), ("ode", 3, {"solver": "heun"})]:
    images, labels, _, nfe = generate_samples(config, model, process, state.ema_params, mesh, name, steps, 8,
                                              jax.random.PRNGKey(0), **kw)
    assert images.shape == (8, 8, 8, 1) and np.isfinite(images).all() and list(labels) == list(range(8))
  assert nfe == 7
  images, _, _, nfe = generate_samples(config, model, process, state.ema_params, mesh, "ddim", 5, 8,
                                       jax.random.PRNGKey(0))
  assert images.shape == (8, 8, 8, 1) and np.isfinite(images).all() and nfe == 5


def test_v_prediction_needs_vp(tiny):
  with pytest.raises(ValueError, match="which the 'subvp' path does not have"):
    build.setup(tiny(**{"diffusion.sde": "subvp", "diffusion.prediction": "v"}))
  with pytest.raises(ValueError, match="valid SDEs: cosine_interpolant, edm, rectified_flow, subvp, ve, vp"):
    build.setup(tiny(**{"diffusion.sde": "vpsde"}))
