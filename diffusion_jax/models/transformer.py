"""The spatial transformer of latent diffusion's U-Net (Rombach et al. 2022, Sec. 3.3; diffusers' `Transformer2DModel`
with `BasicTransformerBlock`): feature-map positions attend to each other and, by cross-attention, to a context
sequence (text-encoder states), then pass a GEGLU feed-forward layer; parameter names follow diffusers."""
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import Conv, Dense, GroupNorm, multihead_attention
from diffusion_jax.models.remat import remat


class Attention(nn.Module):
  """Multi-head attention of x [B, N, C] to context [B, M, Cc] (x itself when None); q, k, v projections without bias
  as in Stable Diffusion (qkv_bias=True: with, as in DiT), the output's with; qkv_init / out_init initialise them.
  Computes in x's dtype (the context is cast to it)."""
  heads: int
  head_dim: int
  qkv_bias: bool = False
  qkv_init: Callable = nn.initializers.lecun_normal()
  out_init: Callable = nn.initializers.lecun_normal()
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x, context=None):
    context = x if context is None else context.astype(x.dtype)
    inner = self.heads * self.head_dim
    proj = lambda name: Dense(inner, self.qkv_init, self.qkv_bias, name=name, kernels=self.kernels)
    q, k, v = proj("to_q")(x), proj("to_k")(context), proj("to_v")(context)
    o = multihead_attention(q, k, v, self.heads, self.kernels)
    return Dense(x.shape[-1], self.out_init, name="to_out", kernels=self.kernels)(o)


class TransformerBlock(nn.Module):
  """LayerNorm-self-attention, LayerNorm-cross-attention, LayerNorm-GEGLU feed-forward (Shazeer 2020), each residual."""
  heads: int
  head_dim: int
  eps: float = 1e-5
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x, context):
    c = x.shape[-1]
    norm = lambda name: nn.LayerNorm(self.eps, dtype=x.dtype, name=name)  # float32 statistics whatever x's dtype
    x = x + Attention(self.heads, self.head_dim, name="attn1", kernels=self.kernels)(norm("norm1")(x))
    x = x + Attention(self.heads, self.head_dim, name="attn2", kernels=self.kernels)(norm("norm2")(x), context)
    h, gate = jnp.split(Dense(8 * c, name="ff_proj", kernels=self.kernels)(norm("norm3")(x)), 2, axis=-1)
    return x + Dense(c, name="ff_out", kernels=self.kernels)(h * jax.nn.gelu(gate, approximate=False))


class SpatialTransformer(nn.Module):
  """GroupNorm, projection in (1x1 conv, or linear as in SD 2), `depth` transformer blocks over the H*W positions with
  cross-attention to `context` [B, M, Cc], projection out, plus the input."""
  heads: int
  head_dim: int
  depth: int = 1
  groups: int = 32
  linear_projection: bool = False
  kernels: str = "auto"
  remat: str = "none"  # models/remat, per transformer block

  @nn.compact
  def __call__(self, x, context):
    b, hgt, wid, c = x.shape
    inner = self.heads * self.head_dim
    h = GroupNorm(self.groups, 1e-6, name="norm", kernels=self.kernels)(x)
    if self.linear_projection:
      h = Dense(inner, name="proj_in", kernels=self.kernels)(h.reshape(b, hgt * wid, c))
    else:
      h = Conv(inner, (1, 1), name="proj_in", kernels=self.kernels)(h).reshape(b, hgt * wid, inner)
    for i in range(self.depth):
      h = remat(TransformerBlock, self.remat)(self.heads, self.head_dim, name=f"transformer_blocks_{i}",
                                              kernels=self.kernels)(h, context)
    if self.linear_projection:
      return x + Dense(c, name="proj_out", kernels=self.kernels)(h).reshape(b, hgt, wid, c)
    return x + Conv(c, (1, 1), name="proj_out", kernels=self.kernels)(h.reshape(b, hgt, wid, inner))


DIFFUSERS_NAMES = {"to_out": "to_out.0", "ff_proj": "ff.net.0.proj", "ff_out": "ff.net.2"}


def diffusers_name(module):
  """diffusers' name of one of these modules (transformer_blocks_0 -> transformer_blocks.0, ff_out -> ff.net.2)."""
  return DIFFUSERS_NAMES.get(module, module.replace("transformer_blocks_", "transformer_blocks."))


def diffusers_key(path):
  """The diffusers Transformer2DModel state-dict key of one of SpatialTransformer's parameter paths."""
  *mods, leaf = path
  return ".".join([diffusers_name(m) for m in mods] + [{"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]])
