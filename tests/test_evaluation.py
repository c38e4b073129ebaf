import numpy as np
import pytest

from diffusion_jax.data import get_dataset
from conftest import tiny_config
from diffusion_jax.evaluation import digits_classifier, metrics


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
  c = tiny_config(**{"eval.classifier_steps": 600})
  d = str(tmp_path_factory.mktemp("clf"))
  return c, digits_classifier.load_or_train(c.data, d, steps=600), d


def test_frechet_distance_closed_form():
  # 1-d: (m1 - m2)^2 + s1 + s2 - 2 sqrt(s1 s2)
  assert metrics.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 4 + 9 - 12)
  a = np.diag([1.0, 2.0, 3.0])
  assert metrics.frechet_distance(np.zeros(3), a, np.zeros(3), a) == pytest.approx(0.0, abs=1e-8)
  with pytest.raises(ValueError, match="differ in shape"):
    metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_inception_score_extremes():
  one_hot = np.eye(10)[np.arange(1000) % 10]
  assert metrics.inception_score(one_hot)[0] == pytest.approx(10.0, rel=1e-6)
  assert metrics.inception_score(np.full((1000, 10), 0.1))[0] == pytest.approx(1.0)


def test_classifier_accuracy_and_fid_separates_real_from_noise(classifier, tmp_path):
  c, (params, acc), _ = classifier
  assert acc >= 0.97
  train, held = get_dataset(c, "train"), get_dataset(c, "eval")
  _, ref = digits_classifier.apply(params, train.images)
  probs, held_f = digits_classifier.apply(params, held.images)
  noise = np.clip(np.random.default_rng(0).standard_normal((1000, 8, 8, 1)), -1, 1).astype(np.float32)
  noise_probs, noise_f = digits_classifier.apply(params, noise)
  fid_real, fid_noise = metrics.fid_from_features(ref, held_f), metrics.fid_from_features(ref, noise_f)
  assert fid_real < 0.05 * fid_noise
  assert metrics.inception_score(probs)[0] > 7.0 > metrics.inception_score(noise_probs)[0]


def test_metrics_of_a_set_against_itself_and_of_known_gaussians(tmp_path):
  rng = np.random.default_rng(0)
  f = rng.standard_normal((500, 8))
  assert abs(metrics.fid_from_features(f, f)) < 1e-6
  # FID between N(m1, diag(v1)) and N(m2, diag(v2)) from exact moments: |m1 - m2|^2 + sum (sqrt v1 - sqrt v2)^2
  m1, m2, v1, v2 = rng.standard_normal(5), rng.standard_normal(5), rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
  expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
  assert metrics.frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)
  assert metrics.precision_recall(f, f) == (1.0, 1.0)
  far = f + 100.0
  assert metrics.precision_recall(f, far) == (0.0, 0.0)
  kid_same, _ = metrics.kernel_inception_distance(f, rng.standard_normal((500, 8)), num_subsets=20, subset_size=200)
  kid_shift, _ = metrics.kernel_inception_distance(f, f + 1.0, num_subsets=20, subset_size=200)
  assert abs(kid_same) < 0.05 < kid_shift
  metrics.save_stats(tmp_path / "s.npz", *metrics.gaussian_stats(f))
  mu, sigma = metrics.load_stats(tmp_path / "s.npz")
  assert mu.shape == (8,) and sigma.shape == (8, 8) and set(np.load(tmp_path / "s.npz").files) == {"mu", "sigma"}


def test_kid_is_the_unbiased_mmd_of_the_cubic_kernel():
  """KID against a direct evaluation of the unbiased MMD^2 estimator on one subset covering both sets."""
  rng = np.random.default_rng(1)
  x, y = rng.standard_normal((30, 4)), rng.standard_normal((30, 4)) + 0.5
  k = lambda a, b: (a @ b.T / 4 + 1) ** 3
  n = 30
  direct = ((k(x, x).sum() - np.trace(k(x, x))) / (n * (n - 1)) + (k(y, y).sum() - np.trace(k(y, y))) / (n * (n - 1))
            - 2 * k(x, y).mean())
  assert metrics.kernel_inception_distance(x, y, num_subsets=1, subset_size=30)[0] == pytest.approx(direct, rel=1e-12)


def test_bad_features_are_refused(tmp_path):
  f = np.random.default_rng(0).standard_normal((20, 8))
  f[3, 2] = np.nan
  with pytest.raises(ValueError, match="1 of 20 feature vectors contain NaN"):
    metrics.fid_from_features(f, f)
  with pytest.warns(UserWarning, match="covariance is singular"):
    metrics.gaussian_stats(np.ones((4, 8)))
  np.savez(tmp_path / "bad.npz", mean=np.zeros(3))
  with pytest.raises(ValueError, match="needs arrays 'mu' and 'sigma'"):
    metrics.load_stats(tmp_path / "bad.npz")


def pytorch_fid_function(name):
  """A function of pytorch-fid's fid_score.py, compiled from its installed source without importing the module
  (which imports torch and torchvision)."""
  import ast
  import importlib.util
  import os

  import scipy.linalg
  path = os.path.join(os.path.dirname(importlib.util.find_spec("pytorch_fid").origin), "fid_score.py")
  tree = ast.parse(open(path).read())
  fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
  namespace = {"np": np, "linalg": scipy.linalg}
  exec(compile(ast.Module([fn], []), path, "exec"), namespace)
  return namespace[name]


def test_frechet_distance_equals_pytorch_fid():
  reference = pytorch_fid_function("calculate_frechet_distance")
  rng = np.random.default_rng(3)
  a, b = rng.standard_normal((400, 16)), rng.standard_normal((300, 16)) @ rng.uniform(0.5, 1.5, (16, 16)) + 0.3
  stats = metrics.gaussian_stats(a) + metrics.gaussian_stats(b)
  assert metrics.frechet_distance(*stats) == pytest.approx(float(reference(*stats)), rel=1e-6)


def test_running_statistics_of_batches_equal_those_of_the_whole_set():
  """Chan et al.'s update over uneven batches gives np.mean / np.cov of the concatenation (to float64 rounding)."""
  f = np.random.default_rng(4).standard_normal((257, 6)) * 3.0 + 10.0
  stats = metrics.RunningStats()
  for part in np.split(f, [1, 50, 51, 200]):
    stats.add(part)
  mu, sigma = stats.stats()
  np.testing.assert_allclose(mu, f.mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), rtol=1e-10, atol=1e-12)


def test_scorer_streams_batches_like_the_whole_array_and_checks_its_config(classifier):
  """The digits Scorer: rows scored batch by batch equal the row of the whole array (FID, IS, class accuracy); the
  training split's statistics are cached in pytorch-fid's format; bad names and datasets are refused."""
  from diffusion_jax.evaluation import features
  c, (params, acc), d = classifier
  scorer = features.Scorer(c, d)
  held = get_dataset(c, "eval")
  whole = scorer(held.images, held.labels)
  acc_stream = scorer.stream()
  for idx in np.array_split(np.arange(len(held.images)), 3):
    acc_stream.add(held.images[idx], held.labels[idx])
  streamed = acc_stream.row()
  assert streamed == pytest.approx(whole, abs=2e-3) and streamed["num_samples"] == len(held.images)
  assert set(whole) == {"fid_digits", "is_digits", "is_digits_std", "class_accuracy", "num_samples"}
  assert whole["class_accuracy"] >= 0.97 and whole["fid_digits"] < 15.0  # noise scores in the hundreds
  mu, _ = metrics.load_stats(scorer.reference_path)
  _, train_features = digits_classifier.apply(params, get_dataset(c, "train").images)
  np.testing.assert_allclose(mu, train_features.mean(0), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="Unknown feature extractor 'clip'; valid feature extractors: digits, inception"):
    features.Scorer(tiny_config(**{"eval.features": "clip"}), d)
  with pytest.raises(ValueError, match="needs data.name='digits'"):
    features.Scorer(tiny_config(**{"data.name": "tfds", "data.tfds_name": "cifar10"}), d)


def test_frechet_distance_with_fewer_samples_than_dimensions():
  """N < D makes both covariances singular: the trace of the square root still equals the exact value, the nuclear
  norm of X Y^T / sqrt((n1 - 1)(n2 - 1)) for centred features X, Y, and a set against itself scores 0."""
  rng = np.random.default_rng(5)
  x, y = rng.standard_normal((12, 64)), rng.standard_normal((20, 64)) * 2.0 + 0.5
  with pytest.warns(UserWarning, match="covariance is singular"):
    (mx, sx), (my, sy) = metrics.gaussian_stats(x), metrics.gaussian_stats(y)
  xc, yc = x - mx, y - my
  exact = np.linalg.svd(xc @ yc.T, compute_uv=False).sum() / np.sqrt(11 * 19)
  assert metrics.trace_sqrt_product(sx, sy) == pytest.approx(exact, rel=1e-9)
  expected = np.sum((mx - my) ** 2) + np.trace(sx) + np.trace(sy) - 2 * exact
  assert metrics.frechet_distance(mx, sx, my, sy) == pytest.approx(expected, rel=1e-9)
  assert abs(metrics.frechet_distance(mx, sx, mx, sx)) < 1e-6
  with pytest.raises(ValueError, match="not positive semi-definite"):
    metrics.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
