import dataclasses
import os

import jax.numpy as jnp
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
  numeric = lambda row: {k: v for k, v in row.items() if k not in ("features", "references")}
  assert numeric(streamed) == pytest.approx(numeric(whole), abs=2e-3) and streamed["num_samples"] == len(held.images)
  assert set(whole) == {"fid_digits", "is_digits", "is_digits_std", "class_accuracy", "num_samples", "features",
                        "references"}
  assert whole["references"] == f"reference_stats_digits_train.npz@{features.sha256(scorer.reference_path)[:12]}"
  assert whole["class_accuracy"] >= 0.97 and whole["fid_digits"] < 15.0  # noise scores in the hundreds
  mu, _ = metrics.load_stats(scorer.reference_path)
  _, train_features = digits_classifier.apply(params, get_dataset(c, "train").images)
  np.testing.assert_allclose(mu, train_features.mean(0), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="Unknown feature extractor 'sift'; valid feature extractors: clip, digits, "
                                       "dinov2, inception"):
    features.Scorer(tiny_config(**{"eval.features": "digits,sift"}), d)
  with pytest.raises(ValueError, match="must name each feature network once"):
    features.Scorer(tiny_config(**{"eval.features": "digits,digits"}), d)
  with pytest.raises(FileNotFoundError, match="facebook/dinov2-large.*config.eval.dinov2_weights"):
    features.Scorer(tiny_config(**{"eval.features": "dinov2"}), d)
  with pytest.raises(FileNotFoundError, match="openai/clip-vit-large-patch14-336.*config.eval.clip_weights"):
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


def test_one_pass_scores_every_network_against_its_own_references(classifier, tmp_path):
  """eval.features=digits,dinov2,clip (tiny random DINOv2 and CLIP from transformers, test-only): one stream feeds
  every network; the row has each Frechet distance, CMMD on the CLIP embeddings, and names each reference file with
  its SHA-256; streaming equals the whole array; the training split scores ~0 against its own references."""
  import torch
  from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

  from diffusion_jax.evaluation import clip_metrics, features
  c, _, d = classifier
  torch.manual_seed(0)
  Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           patch_size=14, image_size=28)).save_pretrained(tmp_path / "dinov2")
  CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                 num_attention_heads=2, image_size=16, patch_size=8,
                                                 projection_dim=8)).save_pretrained(tmp_path / "clip")
  c = c.copy_and_resolve_references()
  c.eval.features, c.eval.cache_dir = "digits,dinov2,clip", str(tmp_path / "cache")
  c.eval.dinov2_weights, c.eval.clip_weights = str(tmp_path / "dinov2"), str(tmp_path / "clip")
  c.eval.reference_num_images, c.eval.batch_size = 150, 25
  scorer = features.Scorer(c, d)
  assert scorer.columns() == ["fid_digits", "is_digits", "is_digits_std", "fd_dinov2", "fd_clip", "cmmd_clip",
                              "class_accuracy"]
  held = get_dataset(c, "eval")
  images, labels = held.images[:60], held.labels[:60]
  whole = scorer(images, labels)
  acc = scorer.stream()
  for idx in np.array_split(np.arange(60), 3):
    acc.add(images[idx], labels[idx])
  streamed = acc.row()
  numeric = lambda row: {k: v for k, v in row.items() if k not in ("features", "references")}
  assert set(scorer.columns()) <= set(whole) and streamed["references"] == whole["references"]
  assert numeric(streamed) == pytest.approx(numeric(whole), rel=1e-3, abs=1e-3)
  refs = {os.path.basename(r.path): r for r in scorer.references.values()}
  assert sorted(refs) == ["reference_stats_clip_train150.npz", "reference_stats_digits_train150.npz",
                          "reference_stats_dinov2_train150.npz"]
  assert whole["references"].count("@") == 3 and all(f"{n}@{features.sha256(r.path)[:12]}" in whole["references"]
                                                      for n, r in refs.items())
  assert whole["features"] == "digits,dinov2,clip" and whole["num_samples"] == 60
  train = get_dataset(c, "train").images[:150]
  own = scorer(train)
  assert own["fd_dinov2"] < 1e-6 and own["fd_clip"] < 1e-6 and abs(own["cmmd_clip"]) < 1e-6
  assert whole["cmmd_clip"] > 0.005 and whole["fid_digits"] > 1.0  # held-out images are not the references
  # the dinov2 column is DINOv2's CLS features (torch.hub's position resampling) of the images, unrounded
  from diffusion_jax.evaluation import dinov2
  cfg, params = dinov2.load_params(c.eval.dinov2_weights)
  cfg = dataclasses.replace(cfg, interpolate_offset=dinov2.HUB_INTERPOLATE_OFFSET)
  direct = lambda x: np.asarray(dinov2.features(cfg, params, jnp.repeat(jnp.asarray(x), 3, -1)), np.float64)
  ref = scorer.references["dinov2", "cls"]
  np.testing.assert_allclose(ref.mu, direct(train).mean(0), rtol=1e-4, atol=1e-5)
  expected = metrics.frechet_distance(*metrics.gaussian_stats(direct(images)), ref.mu, ref.sigma)
  assert metrics.frechet_distance(*acc.stats["dinov2", "cls"].stats(), ref.mu, ref.sigma) == pytest.approx(
      expected, rel=1e-3) and expected > 0
  kept = np.load(scorer.references["clip", "embedding"].embeddings_path)
  assert kept.shape == (150, 8)
  np.testing.assert_allclose(streamed["cmmd_clip"], clip_metrics.cmmd(np.concatenate(acc.kept["clip", "embedding"]),
                                                                      kept), atol=1e-4)
  c.eval.dinov2_weights = str(tmp_path / "clip")
  with pytest.raises(ValueError, match="clip_vision_model.*facebook/dinov2"):
    features.Scorer(c, d)


def test_clip_score_of_a_text_run_equals_transformers_clip(tmp_path):
  """eval.clip_score with a tiny random transformers CLIPModel (test-only) and the run's own tokenizer saved beside it:
  the row's CLIPScore equals 100 max(cos, 0) of torch's get_image_features and get_text_features of each image and
  its prompt (sample.prompt filled with its class), averaged; unconditional runs and a missing clip network are
  refused with what to set."""
  import torch
  from transformers import CLIPConfig, CLIPModel

  from diffusion_jax import text
  from diffusion_jax.evaluation import features
  from diffusion_jax.models import clip_vision
  from test_text import TEXT
  c = tiny_config(**TEXT, **{"eval.features": "clip", "eval.clip_score": True, "eval.clip_weights": str(tmp_path),
                             "eval.reference_num_images": 40, "eval.batch_size": 20,
                             "sample.prompt": "a photo of the digit {word}"})
  tokenizer = text.get_text(c).tokenizer
  torch.manual_seed(0)
  model = CLIPModel(CLIPConfig(
      text_config=dict(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       max_position_embeddings=12, eos_token_id=3, pad_token_id=0, bos_token_id=2),
      vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         image_size=16, patch_size=8), projection_dim=8)).eval()
  model.save_pretrained(tmp_path)
  tokenizer.save_pretrained(tmp_path)
  held = get_dataset(c, "eval")
  images, labels = held.images[:30], held.labels[:30]
  row = features.Scorer(c, str(tmp_path / "wd"))(images, labels)
  prompts = [f"a photo of the digit {text.DIGIT_WORDS[k]}" for k in labels]
  enc = tokenizer(prompts, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
  pixels = torch.from_numpy(np.asarray(clip_vision.preprocess(images, 16))).permute(0, 3, 1, 2)
  with torch.no_grad():
    out = [model.get_image_features(pixel_values=pixels), model.get_text_features(**enc)]
  img, txt = (getattr(o, "pooler_output", o).numpy().astype(np.float64) for o in out)
  cos = np.sum(img * txt, -1) / np.linalg.norm(img, axis=-1) / np.linalg.norm(txt, axis=-1)
  assert row["clip_score"] == pytest.approx(np.mean(100 * np.maximum(cos, 0)), abs=2e-3)
  with pytest.raises(ValueError, match="not text-conditioned .* set eval.clip_score=False"):
    features.Scorer(tiny_config(**{"eval.features": "clip", "eval.clip_score": True}), str(tmp_path))
  with pytest.raises(ValueError, match="add clip to eval.features"):
    features.Scorer(tiny_config(**TEXT, **{"eval.features": "digits", "eval.clip_score": True}), str(tmp_path))
