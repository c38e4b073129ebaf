"""Guidance against closed forms: classifier guidance with the exact noisy classifier of a mixture samples each class's
component; classifier-free guidance of two equal-covariance Gaussians samples N((1 + w) mu_c - w mu_u, S)."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import build, parallel
from diffusion_jax.guidance import check_labels, classifier_free, classifier_grad, classifier_guided, drop_labels
from diffusion_jax.parametrization import target
from diffusion_jax.samplers import get_sampler
from diffusion_jax.schedules import get_schedule
from diffusion_jax.sde import VESDE, VPSDE
from conftest import random_params
from test_mixture import MEANS, STD, mixture_model_fn

LINEAR = get_schedule("linear", 1000)
N = 4000


def mixture_log_prob(process):
  """Exact noisy classifier: log p(y | x_t) = log posterior of component y under the noised mixture (equal weights
  would cancel; the mixture's weights are those of test_mixture)."""
  from test_mixture import WEIGHTS

  def log_prob(x, t, y):
    alpha, sigma = process.alpha_sigma(t)
    var = alpha**2 * STD**2 + sigma**2
    d2 = jnp.sum((x[:, None, :] - alpha[:, None, None] * MEANS[None]) ** 2, -1)
    logits = jnp.log(WEIGHTS) - 0.5 * d2 / var[:, None]
    return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), y[:, None], 1)[:, 0]
  return log_prob


CASES = [("ddpm", LINEAR, 1000, {}), ("ddim", LINEAR, 200, {}), ("dpm_solver++", LINEAR, 50, {}),
         ("edm", LINEAR, 40, {}), ("pc", VPSDE(), 1000, {"predictor": "euler_maruyama", "corrector": "none"}),
         ("pc", VESDE(), 1000, {"predictor": "reverse_diffusion", "corrector": "none"}),
         ("ode", VPSDE(), 20, {"rtol": 1e-4, "atol": 1e-4})]
ids = lambda v: v if isinstance(v, (str, int)) else type(v).__name__


@pytest.mark.parametrize("name,process,steps,kwargs", CASES, ids=ids)
def test_classifier_guidance_at_scale_one_samples_the_class_component(name, process, steps, kwargs):
  """score(x_t) + grad log p(y | x_t) is the score of p_t(x | y) (Bayes), so s = 1 with the exact classifier
  must sample component y: N(mu_y, STD^2 I). DDPM shifts its mean by Sigma grad (Alg. 1), the others adjust eps."""
  grad = classifier_grad(mixture_log_prob(process))
  y = jnp.full((N,), 1, jnp.int32)
  model = mixture_model_fn(process)
  if name == "ddpm":
    fn = functools.partial(get_sampler(name), model, process, (N, 2), num_steps=steps, y=y, classifier_grad=grad)
  else:
    fn = functools.partial(get_sampler(name), classifier_guided(model, process, grad, 1.0, "eps"), process, (N, 2),
                           num_steps=steps, y=y, **kwargs)
  x = np.asarray(jax.jit(fn)(jax.random.PRNGKey(0)), np.float64)
  np.testing.assert_allclose(x.mean(0), MEANS[1], atol=0.03)
  np.testing.assert_allclose(np.cov(x, rowvar=False), STD**2 * np.eye(2), atol=0.02)


def test_unconditional_mode_plus_classifier_samples_the_class_component():
  """Both guidances composed as the sweep's `classifier` method runs them: w = -1 sends the null label to the model
  (here the exact mixture eps; any other label gets a wrong answer, so a leak would show), then s = 1 with the exact
  noisy classifier is Bayes' rule: DDIM must sample component y."""
  null, mixture = 3, mixture_model_fn(LINEAR)
  model = lambda x, t, y: jnp.where((y == null)[:, None], mixture(x, t), 0.0)
  guided = classifier_guided(classifier_free(model, -1.0, null), LINEAR, classifier_grad(mixture_log_prob(LINEAR)),
                             1.0, "eps")
  fn = functools.partial(get_sampler("ddim"), guided, LINEAR, (N, 2), num_steps=200, y=jnp.full((N,), 2, jnp.int32))
  x = np.asarray(jax.jit(fn)(jax.random.PRNGKey(0)), np.float64)
  np.testing.assert_allclose(x.mean(0), MEANS[2], atol=0.03)
  np.testing.assert_allclose(np.cov(x, rowvar=False), STD**2 * np.eye(2), atol=0.02)


MU_C, MU_U = jnp.array([1.0, -0.5]), jnp.array([0.2, 0.3])
S = jnp.array([[0.5, 0.2], [0.2, 0.3]])


def two_gaussians_model_fn(process, null, prediction):
  """Exact prediction of N(MU_C, S) for labels != null and of N(MU_U, S) for the null label."""
  def model_fn(x, t, y):
    alpha, sigma = process.alpha_sigma(t)
    mu = jnp.where((y == null)[:, None], MU_U, MU_C)
    cov_t = alpha[:, None, None] ** 2 * S + sigma[:, None, None] ** 2 * jnp.eye(2)
    eps = sigma[:, None] * jnp.linalg.solve(cov_t, (x - alpha[:, None] * mu)[..., None])[..., 0]
    return target((x - sigma[:, None] * eps) / alpha[:, None], eps, alpha[:, None], sigma[:, None], prediction)
  return model_fn


@pytest.mark.parametrize("name,process,steps,kwargs", CASES, ids=ids)
def test_classifier_free_guidance_of_two_gaussians(name, process, steps, kwargs):
  """Guided eps of N(mu_c, S) and N(mu_u, S) is the exact eps of N((1 + w) mu_c - w mu_u, S): every sampler must
  produce that Gaussian (here w = 2, with x0 predictions on the schedule samplers)."""
  w, null = 2.0, 10
  prediction = "eps" if isinstance(process, VESDE) or name in ("pc", "ode") else "x0"
  model = classifier_free(two_gaussians_model_fn(process, null, prediction), w, null)
  fn = functools.partial(get_sampler(name), model, process, (N, 2), num_steps=steps, y=jnp.zeros((N,), jnp.int32),
                         prediction=prediction, **kwargs)
  x = np.asarray(jax.jit(fn)(jax.random.PRNGKey(0)), np.float64)
  np.testing.assert_allclose(x.mean(0), (1 + w) * MU_C - w * MU_U, atol=0.05)
  np.testing.assert_allclose(np.cov(x, rowvar=False), S, atol=0.05)


def test_zero_guidance_is_the_unguided_sampler_bit_for_bit():
  model = two_gaussians_model_fn(LINEAR, 10, "eps")
  y = jnp.zeros((64,), jnp.int32)
  run = lambda m: np.asarray(get_sampler("ddim")(m, LINEAR, (64, 2), jax.random.PRNGKey(0), num_steps=10, y=y))
  grad = classifier_grad(lambda x, t, y: -jnp.sum(x**2, -1))
  np.testing.assert_array_equal(run(model), run(classifier_free(model, 0.0, 10)))
  np.testing.assert_array_equal(run(model), run(classifier_guided(model, LINEAR, grad, 0.0, "eps")))
  null_only = lambda x, t, y: model(x, t, jnp.full_like(y, 10))
  np.testing.assert_array_equal(run(null_only), run(classifier_free(model, -1.0, 10)))  # w = -1: unconditional
  assert not np.array_equal(run(model), run(classifier_free(model, 0.5, 10)))


def test_label_dropout_and_label_checks():
  y = jnp.arange(20_000) % 10
  dropped = drop_labels(jax.random.PRNGKey(0), y, 0.1, 10)
  assert abs(float(jnp.mean(dropped == 10)) - 0.1) < 0.01
  np.testing.assert_array_equal(dropped[dropped != 10], y[dropped != 10])
  check_labels(jnp.array([0, 9]), 10)
  with pytest.raises(ValueError, match="must be in 0..9; got \\[10, 12\\]"):
    check_labels(jnp.array([0, 10, 12]), 10)
  from diffusion_jax.sample import sample_labels
  np.testing.assert_array_equal(sample_labels(10, 5, "3,7"), [3, 7, 3, 7, 3])
  np.testing.assert_array_equal(sample_labels(3, 4), [0, 1, 2, 0])
  with pytest.raises(ValueError, match="must be in 0..9; got \\[12\\]"):
    sample_labels(10, 4, "3,12")
  with pytest.raises(ValueError, match="needs class labels"):
    sample_labels(0, 4, "3")


def test_token_id_conditions_drop_and_guide_by_whole_prompts():
  """With token ids [B, M] as the condition, dropout and classifier-free guidance swap whole rows for the empty
  prompt's ids, and the guided output is (1 + w) cond - w uncond of the batched call."""
  from diffusion_jax.guidance import classifier_free
  ids = jnp.tile(jnp.arange(3, 9)[None], (4000, 1))
  empty = jnp.array([1, 2, 0, 0, 0, 0])  # start, end, padding
  dropped = drop_labels(jax.random.PRNGKey(0), ids, 0.2, empty)
  rows_empty = np.all(np.asarray(dropped) == np.asarray(empty), axis=1)
  assert abs(rows_empty.mean() - 0.2) < 0.02
  assert np.all((np.asarray(dropped) == np.asarray(ids)).all(axis=1) | rows_empty)  # whole rows, never mixed
  model_fn = lambda x, t, y: x * jnp.sum(y, axis=1, keepdims=True)  # a stand-in network that reads its condition
  x, t, y = jnp.ones((2, 1)), jnp.zeros((2,)), ids[:2]
  guided = classifier_free(model_fn, 2.0, empty)(x, t, y)
  np.testing.assert_allclose(guided, 3 * model_fn(x, t, y) - 2 * model_fn(x, t, jnp.tile(empty, (2, 1))))


def test_noisy_classifier_trains_on_x_t_with_accuracy_by_noise_level(trained_classifier, tiny, tmp_path):
  """The classifier trained on x_t of the diffusion process reads nearly clean digits and is at chance on pure
  noise; it keeps its own checkpoints, resumes, and refuses a config whose classifier differs from its checkpoint."""
  from diffusion_jax.train_classifier import train_classifier
  from diffusion_jax.build import load_classifier
  config, clf_dir, state = trained_classifier
  assert int(state.step) == 100 and os.listdir(os.path.join(clf_dir, "checkpoints")) == ["100"]
  result = json.load(open(os.path.join(clf_dir, "accuracy_by_noise.json")))
  rows = result["rows"]
  assert result["num_images"] == 297 and len(rows) == 8
  assert [r["t"] for r in rows] == sorted(r["t"] for r in rows)
  assert rows[0]["accuracy"] > 0.6, rows  # t = 1/16: nearly clean
  assert rows[-1]["accuracy"] < 0.3, rows  # t = 15/16: alpha ~ 0.01, chance is 0.1
  assert "| t | log_snr | accuracy |" in open(os.path.join(clf_dir, "accuracy_by_noise.md")).read()
  again = train_classifier(config, "unused")  # resumes at its last step: nothing left to do
  assert int(again.step) == 100
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  with pytest.raises(ValueError, match=r"classifier.model.block_out_channels: checkpoint has \[16, 32\], config has"):
    load_classifier(tiny(**{"classifier.workdir": clf_dir, "classifier.model.block_out_channels": (16, 48)}), "", mesh)
  with pytest.raises(FileNotFoundError, match="--mode=train_classifier"):
    load_classifier(tiny(), str(tmp_path), mesh)
  with pytest.raises(ValueError, match="num_classes is 5 but the 'digits' data has 10"):
    train_classifier(tiny(**{"classifier.model.num_classes": 5}), str(tmp_path))


def test_classifier_guidance_of_a_network_from_a_run_option(trained_classifier, tiny, tmp_path):
  """Run option `s` guides a real network through the command-line path (the classifier loaded from its checkpoint,
  labels from the classifier for an unconditional model, DDPM's mean shift): the trained classifier's own log p(y | x)
  of the samples rises; bad strengths and a missing classifier are refused."""
  from diffusion_jax import sample
  from diffusion_jax.models.classifier import make_log_prob_fn
  from diffusion_jax.build import load_classifier
  config, clf_dir, _ = trained_classifier
  mesh = parallel.make_mesh(devices=jax.devices()[:1])
  uncond = tiny(**{"model.num_classes": 0, "classifier.workdir": clf_dir, "sample.runs": "ddpm:4:s=20",
                   "sample.num_samples": 40})
  model, process = build.setup(uncond)
  params = random_params(model, jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)))
  plain, _, _, _ = sample.generate_samples(uncond, model, process, params, mesh, "ddpm", 4, 40, jax.random.PRNGKey(1))
  assert sample.sample(uncond, str(tmp_path), params, model, process, mesh)[0]["run"] == "ddpm_4_s20"
  out = np.load(os.path.join(tmp_path, "samples", "ddpm_4_s20.npz"))
  guided, labels = out["images"], out["labels"]
  assert list(labels) == [i % 10 for i in range(40)]  # the classifier's classes
  clf, clf_params = load_classifier(config, "", mesh)
  log_p = make_log_prob_fn(clf, clf_params, process)
  t = jnp.full((40,), 1.0 / process.num_timesteps)
  score = lambda x: float(jnp.mean(log_p(jnp.asarray(x), t, jnp.asarray(labels))))
  assert score(guided) > score(plain) + 0.5, (score(guided), score(plain))
  gen = lambda c, **kw: sample.generate_samples(c, model, process, params, mesh, "ddim", 3, 8, jax.random.PRNGKey(1),
                                                (clf, clf_params), **kw)
  with pytest.raises(ValueError, match="needs a class- or text-conditional model"):
    gen(uncond, w=1.0)
  with pytest.raises(ValueError, match="valid: w >= -1"):
    gen(config, w=-2.0)
  with pytest.raises(ValueError, match="needs a trained noise-conditional classifier"):
    sample.generate_samples(uncond, model, process, params, mesh, "ddim", 3, 8, jax.random.PRNGKey(1), s=1.0)
  with pytest.raises(FileNotFoundError, match="--mode=train_classifier"):
    sample.sample(tiny(**{"sample.runs": "ddim:3:s=1"}), str(tmp_path / "none"), params, model, process, mesh)


def test_guidance_without_label_dropout_warns(tiny, caplog):
  from diffusion_jax.sample import guidance_options
  with caplog.at_level("WARNING"):
    options = {"w": 2.0, "eta": 0.0}
    g = guidance_options(tiny(), options, False)
  assert (g["w"], g["s"], options) == (2.0, 0.0, {"eta": 0.0})
  assert "no trained unconditional mode" in caplog.text
