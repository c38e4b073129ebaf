"""Guidance beyond plain CFG: autoguidance, guidance limited to an interval of noise levels, CFG rescale and adaptive
projected guidance, against diffusers (test-only), a reference ODE integration of the piecewise-guided field of two
Gaussians, and bit-for-bit identities; then through the run options of a trained network."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance
from diffusers.guiders.guider_utils import rescale_noise_cfg
from scipy.integrate import solve_ivp

from diffusion_jax import parallel, sample
from diffusion_jax.guidance import (Stateful, apg_update, autoguidance, classifier_free, guidance_rule,
                                    limited_interval, rescale_cfg)
from diffusion_jax.samplers import get_sampler, parse_runs
from diffusion_jax.schedules import get_schedule
from test_guidance import MU_C, MU_U, S, two_gaussians_model_fn

LINEAR = get_schedule("linear", 1000)
NULL = 10


def ddim(model_fn, n=64, steps=10, name="ddim", **kw):
  y = jnp.zeros((n,), jnp.int32)
  return np.asarray(jax.jit(lambda rng: get_sampler(name)(model_fn, LINEAR, (n, 2), rng, num_steps=steps, y=y, **kw))(
      jax.random.PRNGKey(0)))


def test_autoguidance_by_the_model_itself_and_the_interval_limits_are_bit_for_bit():
  """guide = model: D + w (D - D) is D; an interval outside every level is unguided, one covering them all is CFG."""
  model = two_gaussians_model_fn(LINEAR, NULL, "eps")
  unguided, cfg = ddim(model), ddim(classifier_free(model, 2.0, NULL))
  np.testing.assert_array_equal(unguided, ddim(autoguidance(model, model, 2.0)))
  empty = limited_interval(classifier_free(model, 2.0, NULL), model, LINEAR, (1e6, 2e6))
  every = limited_interval(classifier_free(model, 2.0, NULL), model, LINEAR, (0.0, 1e6))
  np.testing.assert_array_equal(unguided, ddim(empty))
  np.testing.assert_array_equal(cfg, ddim(every))
  assert np.abs(cfg - unguided).max() > 0.5


def test_cfg_rescale_equals_diffusers():
  rng = np.random.default_rng(0)
  guided, cond = (rng.standard_normal((3, 4, 8, 8)) * scale for scale in (2.0, 1.0))
  guided, cond = guided.astype(np.float32), cond.astype(np.float32)
  for phi in (0.0, 0.7, 1.0):
    ours = rescale_cfg(jnp.asarray(guided), jnp.asarray(cond), phi)
    ref = rescale_noise_cfg(torch.from_numpy(guided), torch.from_numpy(cond), phi).numpy()
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("eta,r,beta", [(0.0, 0.0, 0.0), (0.3, 4.0, -0.5), (1.0, 2.5, 0.6)])
def test_apg_equals_diffusers_with_momentum_over_several_steps(eta, r, beta):
  """Sadat et al.'s update (diffusers' normalized_guidance with use_original_formulation=True: cond + w update),
  its momentum buffer carried over five calls: in float64 as diffusers projects (1e-6), and in float32 (2e-5)."""
  rng = np.random.default_rng(1)
  buffer, w = MomentumBuffer(beta), 3.0
  state64, state32 = np.zeros((2, 8, 8, 3)), jnp.zeros((2, 8, 8, 3))
  for _ in range(5):
    cond, ref = rng.standard_normal((2, 2, 8, 8, 3))
    theirs = normalized_guidance(torch.from_numpy(cond), torch.from_numpy(ref), w, buffer if beta else None, eta, r,
                                 use_original_formulation=True).numpy()
    with jax.enable_x64(True):
      ours, state64 = apg_update(jnp.asarray(cond), jnp.asarray(ref), w, jnp.asarray(state64), eta, r, beta)
      ours, state64 = np.asarray(ours), np.asarray(state64)
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=1e-6)
    ours32, state32 = apg_update(jnp.asarray(cond, jnp.float32), jnp.asarray(ref, jnp.float32), w, state32, eta, r,
                                 beta)
    np.testing.assert_allclose(np.asarray(ours32), theirs, atol=2e-5, rtol=2e-5)


def test_rescale_and_apg_act_on_the_x0_predictions():
  """guidance_rule on an eps model: both predictions converted to x0 = (x - sigma eps) / alpha, combined by CFG and
  diffusers' rescale_noise_cfg (or APG's normalized_guidance), converted back to eps."""
  rng = np.random.default_rng(2)
  x, cond, ref = (rng.standard_normal((3, 4, 4, 2)).astype(np.float32) for _ in range(3))
  t = jnp.full((3,), 0.4)
  alpha, sigma = (float(v[0]) for v in LINEAR.alpha_sigma(t))
  to_x0 = lambda e: torch.from_numpy((x - sigma * e) / alpha)
  for options, combine in (
      ({"rescale": 0.7}, lambda c, r: rescale_noise_cfg(c + 2.0 * (c - r), c, 0.7)),
      ({"apg": True, "apg_eta": 0.3, "apg_r": 1.0}, lambda c, r: normalized_guidance(
          c, r, 2.0, None, 0.3, 1.0, use_original_formulation=True))):
    rule, _ = guidance_rule(2.0, LINEAR, "eps", **options)
    ours = np.asarray(rule(jnp.asarray(cond), jnp.asarray(ref), jnp.asarray(x), t, ())[0])
    expected = (x - alpha * combine(to_x0(cond), to_x0(ref)).numpy()) / sigma
    np.testing.assert_allclose(ours, expected, atol=2e-5, rtol=1e-5)


def gaussian_eps(mu, sigma_bar, x_bar):
  """Exact eps of N(mu, S) at x_bar = x_t / alpha_t = x_0 + sigma_bar eps: sigma_bar (S + sigma_bar^2 I)^-1
  (x_bar - mu)."""
  return sigma_bar * np.linalg.solve(S + sigma_bar**2 * np.eye(2), x_bar - mu)


def test_interval_guidance_of_two_gaussians_matches_the_reference_ode():
  """The probability-flow ODE of x_bar = x_t / alpha_t in sigma_bar = sigma_t / alpha_t is dx_bar / dsigma_bar = eps;
  guided, eps = (1 + w) eps_c - w eps_u for sigma_bar in [lo, hi] and eps_c elsewhere. Integrated by scipy's RK45 in
  float64 from each sample's x_T, it must give what DDIM (exact Euler steps of this ODE) gives at 1000 steps, in mean
  and covariance; and both must differ from plain CFG and from no guidance."""
  w, interval, n = 2.0, (0.5, 2.0), 400
  model = two_gaussians_model_fn(LINEAR, NULL, "eps")
  guided = limited_interval(classifier_free(model, w, NULL), model, LINEAR, interval)
  x_ddim = ddim(guided, n, steps=1000).astype(np.float64)
  x_T = np.asarray(jax.random.normal(jax.random.split(jax.random.PRNGKey(0))[0], (n, 2)), np.float64)
  abar = np.asarray(LINEAR.alphas_cumprod, np.float64)
  sigma_max = np.sqrt((1 - abar[-1]) / abar[-1])
  mu_c, mu_u = np.asarray(MU_C, np.float64), np.asarray(MU_U, np.float64)

  def field(sigma_bar, flat):
    x = flat.reshape(n, 2).T
    eps_c = gaussian_eps(mu_c[:, None], sigma_bar, x)
    inside = interval[0] <= sigma_bar <= interval[1]
    return (eps_c + w * (eps_c - gaussian_eps(mu_u[:, None], sigma_bar, x)) if inside else eps_c).T.ravel()
  solution = solve_ivp(field, (sigma_max, 0.0), (x_T * np.sqrt(1 + sigma_max**2)).ravel(), rtol=1e-9, atol=1e-9,
                       t_eval=[0.0])
  x_ref = solution.y[:, -1].reshape(n, 2)
  np.testing.assert_allclose(x_ddim.mean(0), x_ref.mean(0), atol=0.02)
  np.testing.assert_allclose(np.cov(x_ddim, rowvar=False), np.cov(x_ref, rowvar=False), atol=0.02)
  cfg = ddim(classifier_free(model, w, NULL), n, steps=1000)
  plain = ddim(model, n, steps=1000)
  for other in (cfg, plain):
    assert np.abs(other.mean(0) - x_ref.mean(0)).max() > 0.2


def test_apg_momentum_is_threaded_through_the_samplers_loops():
  """A Stateful guided model (APG with momentum) runs in every sampler that threads it, where beta = 0 equals the
  stateless rule and beta != 0 differs from it; a sampler that calls the model outside model_scan refuses it."""
  model = two_gaussians_model_fn(LINEAR, NULL, "eps")
  rule = lambda beta: guidance_rule(2.0, LINEAR, "eps", apg=True, apg_eta=0.0, apg_beta=beta)
  stateless_rule, stateful = rule(0.0)
  assert not stateful
  momentum = classifier_free(model, 2.0, NULL, *rule(-0.5))
  assert isinstance(momentum, Stateful)
  zero = classifier_free(model, 2.0, NULL, guidance_rule(2.0, LINEAR, "eps", apg=True)[0], True)  # state, beta = 0
  for name in ("ddim", "ddpm", "dpm_solver++", "edm"):
    plain = ddim(classifier_free(model, 2.0, NULL, stateless_rule), name=name)
    np.testing.assert_allclose(ddim(zero, name=name), plain, atol=1e-6)
    assert np.abs(ddim(momentum, name=name) - plain).max() > 1e-2, name
  with pytest.raises(TypeError, match="apg_beta=0"):
    momentum(jnp.zeros((1, 2)), jnp.ones((1,)), jnp.zeros((1,), jnp.int32))


def test_run_options_parse_commas_and_colons_in_values():
  runs = parse_runs("ddim:50:w=2:interval=0.28,5.42:rescale=0.7,ddpm:10:w=1:guide=runs/small:300,edm:5")
  assert runs == [("ddim", 50, {"w": 2, "interval": (0.28, 5.42), "rescale": 0.7}),
                  ("ddpm", 10, {"w": 1, "guide": "runs/small:300"}), ("edm", 5, {})]
  assert sample.run_label("ddim", 50, runs[0][2]) == "ddim_50_interval0.28-5.42_rescale0.7_w2"
  assert sample.run_label("ddpm", 10, runs[1][2]) == "ddpm_10_guideruns_small_300_w1"


@pytest.mark.parametrize("options,message", [
    ({"w": 0.0, "rescale": 0.7}, "set w > 0"),
    ({"w": 2.0, "interval": (5.0, 1.0)}, "0 <= sigma_lo <= sigma_hi"),
    ({"w": 2.0, "rescale": 1.5}, r"lies in \[0, 1\]"),
    ({"w": 2.0, "apg_eta": 0.5}, "without apg=true"),
    ({"w": 2.0, "apg": True, "apg_beta": 1.0}, "-1 < apg_beta < 1"),
    ({"w": -1.0, "guide": "runs/x"}, "needs a strength w > 0"),
    ({"w": 1.0, "apg": True, "apg_beta": -0.5, "s": 1.0}, "does not compose with APG's momentum")])
def test_bad_guidance_options_say_what_is_valid(tiny, options, message):
  with pytest.raises(ValueError, match=message):
    sample.guidance_options(tiny(), dict(options), False)


def test_autoguidance_by_an_earlier_checkpoint_through_the_run_options(trained_tiny, tiny, tmp_path):
  """guide=WORKDIR:STEP loads another checkpoint as the guiding model, in the one compiled sampling loop: the run's
  own last step as guide gives the unguided samples bit for bit, its earlier step other samples, and APG, rescale and
  an interval compose with it; a missing step, and a guide of another process, are refused by name."""
  config, wd, _ = trained_tiny
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  from diffusion_jax import build
  model, process = build.setup(config)
  params = build.load_params(config, wd, mesh)
  gen = functools.partial(sample.generate_samples, config, model, process, params, mesh, "ddim", 4, 20,
                          jax.random.PRNGKey(1))
  plain = gen()[0]
  np.testing.assert_array_equal(plain, gen(w=2.0, guide=f"{wd}:6")[0])
  earlier = gen(w=2.0, guide=f"{wd}:3")[0]
  assert np.abs(earlier - plain).max() > 1e-3
  composed = gen(w=2.0, guide=f"{wd}:3", apg=True, apg_beta=-0.5, rescale=0.5, interval=(0.1, 10.0))[0]
  assert np.isfinite(composed).all() and np.abs(composed - earlier).max() > 1e-4
  with pytest.raises(FileNotFoundError, match="no step 4 in .*; its steps: 3, 6"):
    gen(w=2.0, guide=f"{wd}:4")
  with pytest.raises(ValueError, match="needs the same process(.|\n)*diffusion.prediction: guide has 'eps'"):
    sample.generate_samples(tiny(**{"diffusion.prediction": "v"}), model, process, params, mesh, "ddim", 4, 20,
                            jax.random.PRNGKey(1), w=2.0, guide=f"{wd}:3")
  run = tiny(**{"sample.runs": f"ddim:4:w=1:guide={wd}:3:apg=true:apg_beta=-0.5,ode:3:w=1:guide={wd}:3:apg=true:"
                "apg_beta=-0.5"})
  with pytest.raises(TypeError, match="does not thread"):
    sample.check_sampling(run, process)
  fresh = str(tmp_path / "fresh")
  own = tiny(**{"sample.runs": f"ddim:4:w=1:guide={fresh}:3"})
  sample.check_sampling(own, process, fresh)  # a step of the run itself: training writes it later
  with pytest.raises(ValueError, match="name an earlier checkpoint"):
    sample.check_sampling(tiny(**{"sample.runs": f"ddim:4:w=1:guide={fresh}"}), process, fresh)
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    sample.check_sampling(own, process, str(tmp_path / "other"))
  assert os.path.isdir(os.path.join(wd, "checkpoints", "3"))
