"""The Flax FID Inception against a PyTorch reference written from pytorch-fid's architecture
(torch_fid_inception.py): one set of random weights in both, converted by name, equal pool3 features and logits
with preprocessing included; and the FID command."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # a test-only dependency (requirements-test.txt)

from diffusion_jax.evaluation import inception
from torch_fid_inception import random_network


@pytest.fixture(scope="module")
def reference():
  """The torch network with random weights and batch-norm statistics, and the same weights converted for Flax."""
  net, state = random_network()
  return net, inception.params_from_pytorch(state), state


def test_features_and_logits_equal_pytorch_fid_architecture(reference):
  net, params, _ = reference
  images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    ref_pool, ref_logits = (t.numpy() for t in net(torch.from_numpy((images + 1) / 2).permute(0, 3, 1, 2)))
  pool, logits = jax.jit(lambda p, x: inception.FIDInceptionV3().apply({"params": p}, x))(params, jnp.asarray(images))
  assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
  assert np.std(ref_pool) > 1e-3  # the random network passes signal through its whole depth
  np.testing.assert_allclose(pool, ref_pool, rtol=1e-4, atol=1e-4 * np.abs(ref_pool).max())
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4 * np.abs(ref_logits).max())


def test_sfid_spatial_features_are_mixed_6_conv_first_7_channels(reference):
  # ADM's evaluator takes mixed_6/conv:0 [..., :7] of the TF graph: pytorch-fid's Mixed_6d.branch1x1 (conv, batch
  # norm, ReLU), here captured by a hook on the reference network and, in the Flax network, as the 1x1 conv's own
  # activation; both equal the spatial features, flattened in NHWC order (17 x 17 x 7 = 2023)
  net, params, _ = reference
  images = np.random.default_rng(2).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  seen = []
  hook = net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, out: seen.append(out.detach().numpy()))
  with torch.no_grad():
    net(torch.from_numpy((images + 1) / 2).permute(0, 3, 1, 2))
  hook.remove()
  ref = seen[0][:, :7].transpose(0, 2, 3, 1).reshape(2, -1)
  (pool, _, spatial), state = inception.FIDInceptionV3(spatial=True).apply(
      {"params": params}, jnp.asarray(images), capture_intermediates=lambda mdl, _: mdl.name == "branch1x1")
  branch = state["intermediates"]["Mixed_6d"]["branch1x1"]["__call__"][0]
  assert spatial.shape == (2, 2023) and branch.shape == (2, 17, 17, 192)
  np.testing.assert_array_equal(spatial, np.asarray(branch)[..., :7].reshape(2, -1))
  np.testing.assert_allclose(spatial, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  assert np.std(ref) > 1e-3


def test_converted_parameters_cover_the_network(reference, tmp_path):
  _, params, state = reference
  shapes = jax.eval_shape(lambda: inception.FIDInceptionV3().init(jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3)),
                                                                  resize=False)["params"])
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(shapes), jax.tree.leaves(params)))
  np.savez(tmp_path / "w.npz", **state)
  loaded = inception.load_params(str(tmp_path / "w.npz"))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)))
  inception.convert(str(tmp_path / "w.npz"), str(tmp_path / "w.msgpack"))  # the Flax checkpoint loads without torch
  restored = inception.load_params(str(tmp_path / "w.msgpack"))
  assert jax.tree.structure(restored) == jax.tree.structure(params)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params)))
  with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
    inception.load_params(str(tmp_path / "missing.pth"))


def test_fid_pipeline_on_a_folder_and_an_npz_of_images(reference, tmp_path):
  """The same images from a folder of PNGs and from a samples .npz give the same features as the reference network,
  through jitted, sharded batches (the last one padded); bad images are refused with the expected format."""
  from PIL import Image

  from diffusion_jax.evaluation import features, fid
  net, params, _ = reference
  pixels = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
  (tmp_path / "imgs").mkdir()
  for i, im in enumerate(pixels):
    Image.fromarray(im).save(tmp_path / "imgs" / f"{i}.png")
  np.savez(tmp_path / "samples.npz", images=pixels[..., :1] / 127.5 - 1.0)  # grayscale is repeated to RGB
  from_folder = fid.load_images(str(tmp_path / "imgs"))
  np.testing.assert_allclose(from_folder, pixels / 127.5 - 1.0, atol=1e-6)
  assert fid.load_images(str(tmp_path / "samples.npz")).shape == (3, 16, 16, 3)
  pool, logits = features.inception_apply(params, batch_size=2)(from_folder)
  with torch.no_grad():
    ref_pool, _ = net(torch.from_numpy(pixels / 255.0).float().permute(0, 3, 1, 2))
  np.testing.assert_allclose(pool, ref_pool.numpy(), rtol=1e-4, atol=1e-4 * float(ref_pool.abs().max()))
  assert logits.shape == (3, 1008)
  with pytest.raises(ValueError, match=r"\[N, H, W, C\] array with C = 1 or 3"):
    features.check_images(np.zeros((2, 3, 16, 16)))
  with pytest.raises(ValueError, match="floats in \\[-1, 1\\]; got dtype uint8"):
    features.check_images(pixels)
  with pytest.raises(ValueError, match="must lie in \\[-1, 1\\]"):
    features.check_images(pixels.astype(np.float32))


def test_fid_command_on_statistics_files(tmp_path):
  """`python -m diffusion_jax.evaluation.fid A.npz B.npz` on pytorch-fid statistics files: the closed form of two
  diagonal Gaussians; without weights, image inputs get the message naming the file to fetch."""
  from conftest import run_python
  from diffusion_jax.evaluation import metrics
  m1, m2, v1, v2 = np.zeros(4), np.full(4, 0.5), np.full(4, 1.0), np.full(4, 4.0)
  metrics.save_stats(tmp_path / "a.npz", m1, np.diag(v1))
  metrics.save_stats(tmp_path / "b.npz", m2, np.diag(v2))
  out = run_python(["-m", "diffusion_jax.evaluation.fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]).stdout
  assert f"FID: {4 * 0.25 + 4 * 1.0:.6f}" in out
  np.savez(tmp_path / "imgs.npz", images=np.zeros((2, 8, 8, 3), np.float32))
  proc = run_python(["-m", "diffusion_jax.evaluation.fid", str(tmp_path / "imgs.npz"), str(tmp_path / "b.npz")],
                    check=False)
  assert proc.returncode != 0 and "pt_inception-2015-12-05-6726825d.pth" in proc.stderr


def test_eval_with_inception_features_streams_runs_and_caches_reference_statistics(reference, trained_tiny, tmp_path):
  """The --mode=eval path with eval.features=inception: reference statistics of the training images computed once
  and cached in pytorch-fid's format (the file is read back, not recomputed), a run not sampled yet streamed from
  the sampler into the features, FID / IS columns and the sample count in the report."""
  import flax.serialization

  from conftest import tiny_config
  from diffusion_jax import evaluate
  from diffusion_jax.evaluation import features, metrics
  _, params, _ = reference
  (tmp_path / "w.msgpack").write_bytes(flax.serialization.to_bytes(params))
  _, _, state = trained_tiny
  config = tiny_config(**{"eval.features": "inception", "eval.sfid": True,
                          "eval.inception_weights": str(tmp_path / "w.msgpack"),
                          "eval.reference_num_images": 24, "eval.batch_size": 12, "sample.num_samples": 12,
                          "sample.batch_size": 12, "sample.runs": "ddim:3"})
  wd = str(tmp_path / "run")
  results = evaluate.evaluate(config, wd, params=state.ema_params)
  rows = {r["run"]: r for r in results["rows"]}
  assert set(rows) == {"real held-out images", "gaussian noise", "ddim_3"}
  run = rows["ddim_3"]
  assert run["num_samples"] == 12 and run["nfe"] == 3 and "class_accuracy" not in run  # ImageNet classes
  assert run["fid_inception"] > 0 and run["sfid_inception"] > 0 and 1.0 <= run["is_inception"] <= 1008
  assert rows["gaussian noise"]["fid_inception"] > rows["real held-out images"]["fid_inception"]
  assert os.path.exists(os.path.join(wd, "samples", "ddim_3.png"))
  assert not os.path.exists(os.path.join(wd, "samples", "ddim_3.npz"))  # streamed, not stored
  report = open(os.path.join(wd, "report.md")).read()
  assert "FID Inception network" in report and "| fid_inception | sfid_inception | is_inception |" in report
  sha = features.sha256(os.path.join(wd, "reference_stats_inception_train24.npz"))
  assert f"reference_stats_inception_train24.npz@{sha[:12]}" in run["references"] and sha in report
  path = os.path.join(wd, "reference_stats_inception_train24.npz")
  mu, sigma = metrics.load_stats(path)
  assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
  metrics.save_stats(path, mu + 1.0, sigma)
  np.testing.assert_array_equal(features.Scorer(config, wd).references["inception", "pool3"].mu, mu + 1.0)
  metrics.save_stats(path, np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match="are 3-d, but eval.features network 'inception' gives 2048-d features"):
    features.Scorer(config, wd)
  with pytest.raises(FileNotFoundError, match="Download pytorch-fid's pt_inception-2015-12-05-6726825d.pth"):
    features.Scorer(tiny_config(**{"eval.features": "inception"}), wd)
