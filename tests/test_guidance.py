"""Guidance against closed forms: classifier guidance with the exact noisy classifier of a mixture samples each class's
component; classifier-free guidance of two equal-covariance Gaussians samples N((1 + w) mu_c - w mu_u, S)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.guidance import check_labels, classifier_free, classifier_grad, classifier_guided, drop_labels
from diffusion_jax.losses import target
from diffusion_jax.samplers import get_sampler
from diffusion_jax.schedules import get_schedule
from diffusion_jax.sde import VESDE, VPSDE
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
  assert not np.array_equal(run(model), run(classifier_free(model, 0.5, 10)))


def test_label_dropout_and_label_checks():
  y = jnp.arange(20_000) % 10
  dropped = drop_labels(jax.random.PRNGKey(0), y, 0.1, 10)
  assert abs(float(jnp.mean(dropped == 10)) - 0.1) < 0.01
  np.testing.assert_array_equal(dropped[dropped != 10], y[dropped != 10])
  check_labels(jnp.array([0, 9]), 10)
  with pytest.raises(ValueError, match="must be in 0..9; got \\[10, 12\\]"):
    check_labels(jnp.array([0, 10, 12]), 10)


def perturbed(params, scale=0.1):
  """Parameters plus noise: zero-initialised layers would hide the inputs' (labels', times') effect at init."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


def test_guided_sampling_of_a_network_and_bad_input(tiny, caplog):
  """`w` as a run option guides a real network (one batched call); a model without label dropout warns, an
  unconditional model refuses."""
  from diffusion_jax import train
  from diffusion_jax.sample import generate_samples
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  config = tiny()  # trained without label dropout: guidance works but warns
  model, process = train.setup(config)
  params = train.init_state(config, model, train.make_optimizer(config.optim), jax.random.PRNGKey(0)).params
  params = perturbed(params)  # the zero-initialised output layer would make cond == uncond
  gen = lambda c, **kw: generate_samples(c, model, process, params, mesh, "ddim", 3, 8, jax.random.PRNGKey(1), **kw)[0]
  plain = gen(config)
  with caplog.at_level("WARNING"):
    guided = gen(config, w=3.0)
  assert "no trained unconditional mode" in caplog.text
  assert np.isfinite(guided).all() and not np.array_equal(plain, guided)
  with pytest.raises(ValueError, match="needs a class-conditional model"):
    gen(tiny(**{"model.num_classes": 0}), w=1.0)


def test_noisy_classifier_gradient_guides_a_sampler():
  """The ADM-style classifier gives per-example logits that depend on t; its jax.grad log p(y | x_t) runs inside a
  compiled sampling loop (classifier guidance through a network, untrained)."""
  from diffusion_jax.models.classifier import NoisyClassifier
  clf = NoisyClassifier(num_classes=10, block_out_channels=(16, 32), norm_groups=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  params = perturbed(clf.init(jax.random.PRNGKey(1), x, jnp.zeros((4,)))["params"])
  logits = clf.apply({"params": params}, x, jnp.array([0.0, 10.0, 500.0, 999.0]))
  assert logits.shape == (4, 10)
  np.testing.assert_allclose(clf.apply({"params": params}, x[1:2], jnp.array([10.0])), logits[1:2], rtol=1e-4, atol=1e-5)
  assert not np.allclose(logits[0], clf.apply({"params": params}, x[:1], jnp.array([999.0]))[0])
  log_prob = lambda x, t, y: jnp.take_along_axis(
      jax.nn.log_softmax(clf.apply({"params": params}, x, LINEAR.network_time(t))), y[:, None], 1)[:, 0]
  y = jnp.arange(4) % 10
  model = lambda x, t, y: jnp.zeros_like(x)
  guided = classifier_guided(model, LINEAR, classifier_grad(log_prob), 5.0, "eps")
  out = jax.jit(lambda rng: get_sampler("ddim")(guided, LINEAR, (4, 8, 8, 1), rng, num_steps=3, y=y))(
      jax.random.PRNGKey(2))
  plain = get_sampler("ddim")(model, LINEAR, (4, 8, 8, 1), jax.random.PRNGKey(2), num_steps=3, y=y)
  assert np.isfinite(out).all() and not np.allclose(out, plain)
