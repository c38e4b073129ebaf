"""The Flax FID Inception against a PyTorch reference written from pytorch-fid's architecture (its `FIDInception*`
blocks on torchvision's InceptionV3; pytorch-fid's own module needs torchvision, which is not installable beside
torch here): one set of random weights in both, converted by name, equal pool3 features and logits with
preprocessing included."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # a test-only dependency (requirements-test.txt)

from diffusion_jax.evaluation import inception

F = torch.nn.functional


class Conv(torch.nn.Module):
  def __init__(self, cin, cout, **kw):
    super().__init__()
    self.conv = torch.nn.Conv2d(cin, cout, bias=False, **kw)
    self.bn = torch.nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def avg_exclude_pad(x):
  return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class A(torch.nn.Module):
  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = Conv(cin, 64, kernel_size=1)
    self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, kernel_size=1), Conv(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = Conv(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = Conv(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = Conv(96, 96, kernel_size=3, padding=1)
    self.branch_pool = Conv(cin, pool_features, kernel_size=1)

  def forward(self, x):
    return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                      self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                      self.branch_pool(avg_exclude_pad(x))], 1)


class B(torch.nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = Conv(cin, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = Conv(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = Conv(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = Conv(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                      F.max_pool2d(x, 3, 2)], 1)


class C(torch.nn.Module):
  def __init__(self, cin, c7):
    super().__init__()
    row, col = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
    self.branch1x1 = Conv(cin, 192, kernel_size=1)
    self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = Conv(cin, c7, kernel_size=1), Conv(c7, c7, **row), \
        Conv(c7, 192, **col)
    self.branch7x7dbl_1, self.branch7x7dbl_2 = Conv(cin, c7, kernel_size=1), Conv(c7, c7, **col)
    self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5 = Conv(c7, c7, **row), Conv(c7, c7, **col), \
        Conv(c7, 192, **row)
    self.branch_pool = Conv(cin, 192, kernel_size=1)

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = self.branch7x7dbl_1(x)
    for i in range(2, 6):
      bd = getattr(self, f"branch7x7dbl_{i}")(bd)
    return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(avg_exclude_pad(x))], 1)


class D(torch.nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, kernel_size=1), Conv(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = Conv(cin, 192, kernel_size=1)
    self.branch7x7x3_2 = Conv(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = Conv(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = Conv(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, 2)], 1)


class E(torch.nn.Module):
  def __init__(self, cin, max_pool):
    super().__init__()
    self.max_pool = max_pool
    self.branch1x1 = Conv(cin, 320, kernel_size=1)
    self.branch3x3_1 = Conv(cin, 384, kernel_size=1)
    self.branch3x3_2a = Conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3_2b = Conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = Conv(cin, 448, kernel_size=1)
    self.branch3x3dbl_2 = Conv(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = Conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = Conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch_pool = Conv(cin, 192, kernel_size=1)

  def forward(self, x):
    b3 = self.branch3x3_1(x)
    b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
    pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else avg_exclude_pad(x)
    return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class TorchFIDInception(torch.nn.Module):
  """pytorch-fid's InceptionV3 (FID weights, output blocks up to pool3) plus the fc layer, on images in [0, 1]."""

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = Conv(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = Conv(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = Conv(32, 64, kernel_size=3, padding=1)
    self.Conv2d_3b_1x1 = Conv(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = Conv(80, 192, kernel_size=3)
    self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = A(192, 32), A(256, 64), A(288, 64)
    self.Mixed_6a = B(288)
    self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = C(768, 128), C(768, 160), C(768, 160), C(768, 192)
    self.Mixed_7a = D(768)
    self.Mixed_7b, self.Mixed_7c = E(1280, False), E(2048, True)
    self.fc = torch.nn.Linear(2048, 1008)

  def forward(self, x01):
    x = F.interpolate(x01, size=(299, 299), mode="bilinear", align_corners=False)  # resize_input
    x = 2 * x - 1  # normalize_input
    x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), 3, 2)
    x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, 2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      x = getattr(self, f"Mixed_{name}")(x)
    pool3 = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
    return pool3, self.fc(pool3)


@pytest.fixture(scope="module")
def reference():
  """The torch network with random weights and batch-norm statistics, and the same weights converted for Flax."""
  torch.manual_seed(0)
  net = TorchFIDInception().eval()
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.1, 0.1)
        m.running_var.uniform_(0.05, 0.2)  # keeps activations O(1) through the depth of the network
  state = {k: v.numpy() for k, v in net.state_dict().items()}
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


def test_converted_parameters_cover_the_network(reference, tmp_path):
  _, params, state = reference
  shapes = jax.eval_shape(lambda: inception.FIDInceptionV3().init(jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3)),
                                                                  resize=False)["params"])
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(shapes), jax.tree.leaves(params)))
  np.savez(tmp_path / "w.npz", **state)
  loaded = inception.load_params(str(tmp_path / "w.npz"))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)))
  with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
    inception.load_params(str(tmp_path / "missing.pth"))


def test_fid_pipeline_on_a_folder_and_an_npz_of_images(reference, tmp_path):
  """The same images from a folder of PNGs and from a samples .npz give the same features as the reference network,
  through jitted, sharded batches (the last one padded); bad images are refused with the expected format."""
  from PIL import Image

  from diffusion_jax.evaluation import fid
  net, params, _ = reference
  pixels = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
  (tmp_path / "imgs").mkdir()
  for i, im in enumerate(pixels):
    Image.fromarray(im).save(tmp_path / "imgs" / f"{i}.png")
  np.savez(tmp_path / "samples.npz", images=pixels[..., :1] / 127.5 - 1.0)  # grayscale is repeated to RGB
  from_folder = fid.load_images(str(tmp_path / "imgs"))
  np.testing.assert_allclose(from_folder, pixels / 127.5 - 1.0, atol=1e-6)
  assert fid.load_images(str(tmp_path / "samples.npz")).shape == (3, 16, 16, 3)
  pool, logits = fid.extract(params, from_folder, batch_size=2)
  with torch.no_grad():
    ref_pool, _ = net(torch.from_numpy(pixels / 255.0).float().permute(0, 3, 1, 2))
  np.testing.assert_allclose(pool, ref_pool.numpy(), rtol=1e-4, atol=1e-4 * float(ref_pool.abs().max()))
  assert logits.shape == (3, 1008)
  with pytest.raises(ValueError, match=r"\[N, H, W, C\] array with C = 1 or 3"):
    fid.check_images(np.zeros((2, 3, 16, 16)))
  with pytest.raises(ValueError, match="floats in \\[-1, 1\\]; got dtype uint8"):
    fid.check_images(pixels)
  with pytest.raises(ValueError, match="must lie in \\[-1, 1\\]"):
    fid.check_images(pixels.astype(np.float32))


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
