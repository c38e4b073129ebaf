"""What the patch transformers (DiT, U-ViT) share: images to patch tokens and back, the patch embedding, fixed 2-D
sin-cos position embeddings, the pre-norm MLP, and the named sizes of the papers ("XL/2": size XL, patch 2)."""
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models.kernels import get_kernels
from diffusion_jax.models.layers import Dense

xavier = nn.initializers.xavier_uniform()
# DiT's fused qkv projection [d, 3d] under Xavier, for separate q, k, v projections [d, d]
xavier_qkv = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform")


def check_patch(shape, patch, network):
  """Refuses an image (or latent) whose height or width the patch size does not divide."""
  h, w = shape[1:3]
  if h % patch or w % patch:
    valid = [p for p in range(1, min(h, w) + 1) if h % p == 0 and w % p == 0]
    raise ValueError(f"{network}: the {h}x{w} input (data.image_size, or the latent size) is not divisible by the "
                     f"patch size {patch}; valid patch sizes: {', '.join(map(str, valid))}")


def patchify(x, p):
  """[B, H, W, C] -> [B, (H/p)(W/p), p p C]: row-major patches, each flattened in (row, column, channel) order (the
  order of a p x p stride-p convolution's kernel, and of DiT's unpatchify)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens, p, h, w):
  """patchify's inverse: [B, (h/p)(w/p), p p C] -> [B, h, w, C]."""
  b, _, d = tokens.shape
  c = d // (p * p)
  x = tokens.reshape(b, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


def sincos_1d(dim, pos):
  """[len(pos), dim]: sin(pos w_i) then cos(pos w_i), w_i = 10000^(-2i / dim) (Vaswani et al. 2017)."""
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  out = np.outer(pos, omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim, grid_h, grid_w):
  """[grid_h grid_w, dim] fixed position embeddings of row-major tokens (MAE's and DiT's get_2d_sincos_pos_embed):
  the first half of the channels encodes a token's column, the second half its row."""
  rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij")
  return np.concatenate([sincos_1d(dim // 2, cols.ravel()), sincos_1d(dim // 2, rows.ravel())], axis=1)


class PatchEmbed(nn.Module):
  """A p x p convolution of stride p over [B, H, W, C] as one matrix product of the patch tokens: [B, N, features].
  Its kernel [p, p, C, features] is the convolution's (so torch's Conv2d weights load as they are)."""
  features: int
  patch: int
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x):
    p, c = self.patch, x.shape[-1]
    flat = lambda key, shape, dtype=jnp.float32: xavier(key, (p * p * c, shape[-1]), dtype).reshape(shape)  # DiT init
    kernel = self.param("kernel", flat, (p, p, c, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    tokens = jnp.einsum("bnk,kf->bnf", patchify(x, p), kernel.reshape(p * p * c, -1).astype(x.dtype))
    return get_kernels(self.kernels).add_bias(tokens, bias)


class Mlp(nn.Module):
  """Dense (hidden) - GELU - Dense (back to the input's width): the feed-forward layer of a transformer block;
  approximate=True is the tanh GELU of DiT, False the exact one of ViT and U-ViT. Parameters ff_proj / ff_out."""
  hidden: int
  approximate: bool = False
  kernel_init: Callable = xavier
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x):
    h = Dense(self.hidden, kernel_init=self.kernel_init, name="ff_proj", kernels=self.kernels)(x)
    return Dense(x.shape[-1], kernel_init=self.kernel_init, name="ff_out", kernels=self.kernels)(
        jax.nn.gelu(h, approximate=self.approximate))


def layer_norm(x, eps, affine=True, name=None):
  """LayerNorm over the channels with float32 statistics, in x's dtype (without scale and bias unless affine)."""
  return nn.LayerNorm(eps, use_scale=affine, use_bias=affine, dtype=x.dtype, name=name)(x)


def named_size(name, sizes, patches, network):
  """(depth, width, heads, patch) of a size named as in the paper, "XL/2" or "DiT-XL/2": size XL, patch 2."""
  size, _, patch = name.removeprefix(f"{network}-").partition("/")
  if size not in sizes or not patch.isdigit() or int(patch) not in patches:
    raise ValueError(f"Unknown {network} size {name!r} (model.size); valid: "
                     f"{', '.join(f'{s}/{p}' for s in sizes for p in patches)}")
  return (*sizes[size], int(patch))


def resolve_dims(module, sizes, patches, network):
  """(depth, width, heads, patch) of a DiT / U-ViT: from module.size when it names one (explicit fields left at 0 or
  equal to the size's), else its explicit depth, hidden_size, num_heads and patch_size; the heads divide the width."""
  fields = ("depth", "hidden_size", "num_heads", "patch_size")
  given = tuple(getattr(module, f) for f in fields)
  if module.size:
    dims = named_size(module.size, sizes, patches, network)
    clash = {f: g for f, g, d in zip(fields, given, dims) if g and g != d}
    if clash:
      raise ValueError(f"{network}: model.size={module.size!r} means {dict(zip(fields, dims))}, which clashes with "
                       f"{clash}; leave those at 0 or clear model.size")
    return dims
  if min(given) < 1:
    raise ValueError(f"{network}: set model.size (e.g. {next(iter(sizes))}/2) or every one of model."
                     f"{', model.'.join(fields)} (got {dict(zip(fields, given))})")
  if given[1] % given[2]:
    raise ValueError(f"{network}: hidden_size={given[1]} is not divisible by num_heads={given[2]}")
  return given
