"""The FID Inception network in Flax: InceptionV3 as the TF FID graph (2015-12-05) defines it and pytorch-fid
reimplements it (`FIDInceptionA/C/E_1/E_2`: average pools that exclude padding, a max pool in the last block,
1008-way logits), with pytorch-fid's preprocessing; returns pool3 features (2048-d) and logits. Inference only:
batch norms use their stored statistics. Parameter names follow the PyTorch module names, so weights convert by name."""
import flax.linen as nn
import jax
import jax.numpy as jnp

BN_EPS = 1e-3  # torchvision's BasicConv2d


def avg_pool_3x3_exclude_pad(x):
  """3x3 average pool, stride 1, padding 1, dividing by the number of real pixels (count_include_pad=False)."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  window = lambda a: jax.lax.reduce_window(a, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
  return window(x) / window(jnp.ones_like(x[:1, :, :, :1]))


def max_pool(x, size=3, stride=2, padding=0):
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, size, size, 1), (1, stride, stride, 1), pad)


class BasicConv(nn.Module):
  """Conv without bias, batch norm with stored statistics (eps 1e-3), ReLU."""
  features: int
  kernel: tuple = (1, 1)
  stride: int = 1
  padding: tuple = (0, 0)

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel, self.stride, [(p, p) for p in self.padding], use_bias=False,
                name="conv")(x)
    scale, bias = (self.param(n, nn.initializers.ones if n == "scale" else nn.initializers.zeros, (self.features,))
                   for n in ("scale", "bias"))
    mean, var = (self.param(n, nn.initializers.zeros if n == "mean" else nn.initializers.ones, (self.features,))
                 for n in ("mean", "var"))
    return nn.relu((x - mean) * jax.lax.rsqrt(var + BN_EPS) * scale + bias)


def conv(features, kernel=1, stride=1, padding=0, name=None):
  kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
  padding = (padding, padding) if isinstance(padding, int) else padding
  return BasicConv(features, kernel, stride, padding, name=name)


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = conv(64, name="branch1x1")(x)
    b5 = conv(64, 5, padding=2, name="branch5x5_2")(conv(48, name="branch5x5_1")(x))
    b3 = conv(64, name="branch3x3dbl_1")(x)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_3")(conv(96, 3, padding=1, name="branch3x3dbl_2")(b3))
    bp = conv(self.pool_features, name="branch_pool")(avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = conv(384, 3, stride=2, name="branch3x3")(x)
    bd = conv(96, 3, padding=1, name="branch3x3dbl_2")(conv(64, name="branch3x3dbl_1")(x))
    bd = conv(96, 3, stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, max_pool(x)], -1)


class InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    b1 = conv(192, name="branch1x1")(x)
    b7 = conv(c, name="branch7x7_1")(x)
    b7 = conv(192, **col, name="branch7x7_3")(conv(c, **row, name="branch7x7_2")(b7))
    bd = conv(c, name="branch7x7dbl_1")(x)
    bd = conv(c, **row, name="branch7x7dbl_3")(conv(c, **col, name="branch7x7dbl_2")(bd))
    bd = conv(192, **row, name="branch7x7dbl_5")(conv(c, **col, name="branch7x7dbl_4")(bd))
    bp = conv(192, name="branch_pool")(avg_pool_3x3_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = conv(320, 3, stride=2, name="branch3x3_2")(conv(192, name="branch3x3_1")(x))
    b7 = conv(192, name="branch7x7x3_1")(x)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(conv(192, (1, 7), padding=(0, 3),
                                                                       name="branch7x7x3_2")(b7))
    b7 = conv(192, 3, stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, max_pool(x)], -1)


class InceptionE(nn.Module):
  """E_1 (Mixed_7b) pools by an average excluding padding; E_2 (Mixed_7c) by a max pool (a quirk of the TF graph)."""
  max_pool: bool

  @nn.compact
  def __call__(self, x):
    split = lambda h, name: jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name=f"{name}a")(h),
                                             conv(384, (3, 1), padding=(1, 0), name=f"{name}b")(h)], -1)
    b1 = conv(320, name="branch1x1")(x)
    b3 = split(conv(384, name="branch3x3_1")(x), "branch3x3_2")
    bd = split(conv(384, 3, padding=1, name="branch3x3dbl_2")(conv(448, name="branch3x3dbl_1")(x)), "branch3x3dbl_3")
    pooled = max_pool(x, 3, 1, 1) if self.max_pool else avg_pool_3x3_exclude_pad(x)
    bp = conv(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], -1)


def preprocess(images, size=299):
  """pytorch-fid's input path for images in [-1, 1], NHWC: bilinear resize to size x size (align_corners=False, no
  antialiasing, as torch's F.interpolate), values stay in [-1, 1] (its normalize_input maps [0, 1] there)."""
  b, _, _, c = images.shape
  return jax.image.resize(images, (b, size, size, c), "bilinear", antialias=False)


SPATIAL_CHANNELS = 7  # sFID's slice of mixed_6/conv (Nash et al. 2021; guided-diffusion's evaluator.py)


class FIDInceptionV3(nn.Module):
  """images in [-1, 1], [B, H, W, 3] -> (pool3 features [B, 2048], logits [B, 1008]); with spatial=True also sFID's
  spatial features [B, 2023]: the first 7 channels of the TF graph's `mixed_6/conv` (17 x 17 x 192), flattened in
  its NHWC order. The TF graph's mixed, mixed_1 .. mixed_10 are pytorch-fid's Mixed_5b .. Mixed_7c, so mixed_6 is
  Mixed_6d and its `conv` the 1x1 branch (after batch norm and ReLU), whose 192 channels come first in the block's
  output: the slice is Mixed_6d's output [..., :7]."""
  spatial: bool = False

  @nn.compact
  def __call__(self, images, resize=True):
    x = preprocess(images) if resize else images
    x = conv(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
    x = conv(32, 3, name="Conv2d_2a_3x3")(x)
    x = max_pool(conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x))
    x = conv(80, name="Conv2d_3b_1x1")(x)
    x = max_pool(conv(192, 3, name="Conv2d_4a_3x3")(x))
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name)(x)
      if name == "Mixed_6d":
        spatial = x[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(False, name="Mixed_7b")(x)
    x = InceptionE(True, name="Mixed_7c")(x)
    pool3 = x.mean(axis=(1, 2))
    logits = nn.Dense(1008, name="fc")(pool3)
    return (pool3, logits, spatial) if self.spatial else (pool3, logits)


WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILE)
BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def params_from_pytorch(state_dict):
  """Flax parameters from pytorch-fid's FID Inception state dict ({name: array}): conv weights OIHW -> HWIO, batch
  norm weight / bias / running statistics -> scale / bias / mean / var, fc weight transposed."""
  params = {}
  for key, value in state_dict.items():
    value = jnp.asarray(value, jnp.float32)
    *path, module, leaf = key.split(".")
    if leaf == "num_batches_tracked":
      continue
    if module == "conv":
      path, leaf, value = path + ["conv"], "kernel", value.transpose(2, 3, 1, 0)
    elif module == "bn":
      leaf = BN_NAMES[leaf]
    elif module == "fc":
      path, leaf, value = ["fc"], {"weight": "kernel", "bias": "bias"}[leaf], value.T if leaf == "weight" else value
    else:
      raise ValueError(f"Unexpected tensor {key!r} in the FID Inception state dict")
    node = params
    for p in path:
      node = node.setdefault(p, {})
    node[leaf] = value
  return params


def load_params(path):
  """FID Inception parameters from pytorch-fid's weights: the .pth (read with torch), an .npz of the same tensors
  (keys as in the state dict), or the Flax .msgpack that `convert` writes. Nothing is downloaded; a missing file
  says which one to fetch and where."""
  import os

  import flax.serialization
  import numpy as np
  if not path or not os.path.exists(path):
    raise FileNotFoundError(
        f"FID Inception weights not found at {path!r}. Download pytorch-fid's {WEIGHTS_FILE} from {WEIGHTS_URL} "
        "and pass its path (--weights=PATH or the FID_INCEPTION_WEIGHTS environment variable; .pth, an .npz export "
        "of its tensors, or the .msgpack of python -m diffusion_jax.evaluation.inception)")
  if path.endswith(".msgpack"):
    template = jax.eval_shape(lambda: FIDInceptionV3().init(jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3)),
                                                            resize=False)["params"])
    with open(path, "rb") as f:
      return flax.serialization.from_bytes(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template), f.read())
  if path.endswith(".npz"):
    with np.load(path) as f:
      state = {k: f[k] for k in f.files}
  else:
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"Reading {path} needs torch; or export its tensors to .npz with torch elsewhere") from e
    state = {k: v.numpy() for k, v in torch.load(path, map_location="cpu").items()}
  return params_from_pytorch(state)


def convert(src, dst):
  """Writes pytorch-fid's weights (.pth or .npz) as a Flax checkpoint (.msgpack), which loads without torch."""
  import flax.serialization
  with open(dst, "wb") as f:
    f.write(flax.serialization.to_bytes(load_params(src)))


if __name__ == "__main__":
  import sys
  if len(sys.argv) != 3 or not sys.argv[2].endswith(".msgpack"):
    raise SystemExit("usage: python -m diffusion_jax.evaluation.inception SRC.pth|SRC.npz DST.msgpack")
  convert(sys.argv[1], sys.argv[2])
