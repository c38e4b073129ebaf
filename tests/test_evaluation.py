import numpy as np
import pytest

from diffusion_jax.data import get_dataset
from diffusion_jax.evaluation import digits_classifier, metrics


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
  from conftest import tiny_config
  c = tiny_config()
  return c, digits_classifier.load_or_train(c.data, str(tmp_path_factory.mktemp("clf")), steps=600)


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
  c, (params, acc) = classifier
  assert acc >= 0.97
  train, held = get_dataset(c, "train"), get_dataset(c, "eval")
  _, ref = digits_classifier.apply(params, train.images)
  probs, held_f = digits_classifier.apply(params, held.images)
  noise = np.clip(np.random.default_rng(0).standard_normal((1000, 8, 8, 1)), -1, 1).astype(np.float32)
  noise_probs, noise_f = digits_classifier.apply(params, noise)
  fid_real, fid_noise = metrics.fid_from_features(ref, held_f), metrics.fid_from_features(ref, noise_f)
  assert fid_real < 0.05 * fid_noise
  assert metrics.inception_score(probs)[0] > 7.0 > metrics.inception_score(noise_probs)[0]
