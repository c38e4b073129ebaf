"""The DDPM U-Net (Ho et al. 2020) in the block layout of diffusers' `UNet2DModel`, so released checkpoints such as
`ddpm-cifar10-32` map onto it one tensor to one tensor; plus scale-shift and class conditioning (null label =
num_classes), and cross-attention to a context sequence in the layout of `UNet2DConditionModel` (Stable Diffusion)."""
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models.layers import (Conv, Dense, GroupNorm, UpsampleConv, multihead_attention,
                                         class_conditioning)
from diffusion_jax.models.remat import remat
from diffusion_jax.models.transformer import SpatialTransformer

zero_init = nn.initializers.zeros


def timestep_embedding(timesteps, dim, flip_sin_to_cos=False, freq_shift=1.0, max_period=10000.0):
  """Sinusoidal embedding of (possibly fractional) timesteps (Vaswani et al. 2017; DDPM uses freq_shift=1)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
  args = timesteps.astype(jnp.float32)[:, None] * freqs[None]
  sin, cos = jnp.sin(args), jnp.cos(args)
  return jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)


class ResnetBlock(nn.Module):
  """GroupNorm-SiLU-conv, + time embedding (added, or scale-shift; none when temb is None, as in an autoencoder),
  GroupNorm-SiLU-dropout-conv, skip."""
  out_channels: int
  dropout: float = 0.0
  groups: int = 32
  eps: float = 1e-6
  scale_shift: bool = False
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x, temb, train):
    h = GroupNorm(self.groups, self.eps, silu=True, name="norm1", kernels=self.kernels)(x)
    h = Conv(self.out_channels, (3, 3), padding=1, name="conv1", kernels=self.kernels)(h)
    if temb is not None:
      emb = Dense(self.out_channels * (2 if self.scale_shift else 1), name="time_emb_proj",
                  kernels=self.kernels)(nn.silu(temb))
      emb = emb[:, None, None, :]
    scale_shift = temb is not None and self.scale_shift
    if temb is not None and not scale_shift:
      h = h + emb
    h = GroupNorm(self.groups, self.eps, silu=not scale_shift, name="norm2", kernels=self.kernels)(h)
    if scale_shift:
      scale, shift = jnp.split(emb, 2, axis=-1)
      h = nn.silu(h * (1 + scale) + shift)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = Conv(self.out_channels, (3, 3), padding=1, kernel_init=zero_init, name="conv2", kernels=self.kernels)(h)
    if x.shape[-1] != self.out_channels:
      x = Conv(self.out_channels, (1, 1), name="conv_shortcut", kernels=self.kernels)(x)
    return x + h


class AttentionBlock(nn.Module):
  """Spatial self-attention with a residual connection (GroupNorm, q/k/v projections, output projection)."""
  num_heads: int = 1
  groups: int = 32
  eps: float = 1e-6
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x):
    b, hgt, wid, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"AttentionBlock: {c} channels are not divisible by {self.num_heads} heads")
    h = GroupNorm(self.groups, self.eps, name="group_norm", kernels=self.kernels)(x).reshape(b, hgt * wid, c)
    q, k, v = (Dense(c, name=n, kernels=self.kernels)(h) for n in ("to_q", "to_k", "to_v"))
    o = multihead_attention(q, k, v, self.num_heads, self.kernels)
    return x + Dense(c, kernel_init=zero_init, name="to_out", kernels=self.kernels)(o).reshape(b, hgt, wid, c)


DTYPES = ("float32", "bfloat16")


class UNet(nn.Module):
  """DDPM U-Net. `timesteps` are in the network's own units (the discrete index for DDPM checkpoints)."""
  out_channels: int
  block_out_channels: Sequence[int] = (128, 256, 256, 256)
  layers_per_block: int = 2
  attn_resolutions: Sequence[int] = (16,)
  num_heads: int = 1
  dropout: float = 0.0
  norm_groups: int = 32
  norm_eps: float = 1e-6
  scale_shift: bool = False
  num_classes: int = 0  # 0: unconditional; else labels 0..num_classes-1 and the null label num_classes
  flip_sin_to_cos: bool = False
  freq_shift: float = 1.0
  # latent diffusion's text conditioning (Rombach et al. 2022): with context_dim > 0, y is a context sequence
  # [B, M, context_dim] (text-encoder states) and the attention levels are spatial transformers attending to it
  context_dim: int = 0
  transformer_depth: int = 1
  linear_projection: bool = False
  downsample_padding: int = 0  # 0: pad right / bottom by 1 (Ho et al.); 1: pad 1 all round (Stable Diffusion)
  # activations' dtype; "bfloat16" is mixed precision: float32 parameters (cast at each layer), time embedding,
  # GroupNorm statistics and attention softmax, and a float32 output
  dtype: str = "float32"
  kernels: str = "auto"  # models/kernels: how the layers compute (never what they compute)
  remat: str = "none"  # models/remat: which activations each block keeps for the backward pass

  @nn.compact
  def __call__(self, x, timesteps, y: Optional[jnp.ndarray] = None, train: bool = False):
    if self.dtype not in DTYPES:
      raise ValueError(f"U-Net dtype {self.dtype!r} is not supported; valid: {', '.join(DTYPES)}")
    ch0 = self.block_out_channels[0]
    temb = timestep_embedding(timesteps, ch0, self.flip_sin_to_cos, self.freq_shift)
    temb = Dense(4 * ch0, name="time_embedding_1", kernels=self.kernels)(temb)
    temb = Dense(4 * ch0, name="time_embedding_2", kernels=self.kernels)(nn.silu(temb))
    context = None
    if self.context_dim:
      if y is None or y.ndim != 3 or y.shape[-1] != self.context_dim:
        raise ValueError(f"A U-Net with context_dim={self.context_dim} takes y = a context sequence [B, M, "
                         f"{self.context_dim}], got {None if y is None else y.shape}")
      context, y = y, None
    temb = class_conditioning(temb, y, self.num_classes, "U-Net").astype(self.dtype)
    x = x.astype(self.dtype)

    res = lambda **kw: remat(ResnetBlock, self.remat, (3,))(  # (3,): `train`, a Python bool
        dropout=self.dropout, groups=self.norm_groups, eps=self.norm_eps, scale_shift=self.scale_shift, **kw,
        kernels=self.kernels)

    def attn(name):
      if not self.context_dim:
        return remat(AttentionBlock, self.remat)(self.num_heads, self.norm_groups, self.norm_eps, name=name,
                                                 kernels=self.kernels)
      return lambda h: SpatialTransformer(self.num_heads, h.shape[-1] // self.num_heads, self.transformer_depth,
                                          self.norm_groups, self.linear_projection, self.kernels, self.remat,
                                          name=name)(h, context)
    n = len(self.block_out_channels)

    h = Conv(ch0, (3, 3), padding=1, name="conv_in", kernels=self.kernels)(x)
    skips = [h]
    for i, ch in enumerate(self.block_out_channels):
      use_attn = h.shape[1] in self.attn_resolutions
      for j in range(self.layers_per_block):
        h = res(out_channels=ch, name=f"down_{i}_resnet_{j}")(h, temb, train)
        if use_attn:
          h = attn(f"down_{i}_attn_{j}")(h)
        skips.append(h)
      if i < n - 1:
        if not self.downsample_padding:
          h = jnp.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))  # TF "SAME" for stride 2, as in Ho et al.
        h = Conv(ch, (3, 3), strides=2, padding=self.downsample_padding, name=f"down_{i}_downsample",
                 kernels=self.kernels)(h)
        skips.append(h)

    ch = self.block_out_channels[-1]
    h = res(out_channels=ch, name="mid_resnet_0")(h, temb, train)
    h = attn("mid_attn")(h)
    h = res(out_channels=ch, name="mid_resnet_1")(h, temb, train)

    for i, ch in enumerate(reversed(self.block_out_channels)):
      use_attn = h.shape[1] in self.attn_resolutions
      for j in range(self.layers_per_block + 1):
        h = res(out_channels=ch, name=f"up_{i}_resnet_{j}")(jnp.concatenate([h, skips.pop()], axis=-1), temb, train)
        if use_attn:
          h = attn(f"up_{i}_attn_{j}")(h)
      if i < n - 1:
        h = UpsampleConv(ch, name=f"up_{i}_upsample", kernels=self.kernels)(h)  # nearest-neighbour 2x, 3x3 conv
    assert not skips

    h = GroupNorm(self.norm_groups, self.norm_eps, silu=True, name="conv_norm_out", kernels=self.kernels)(h)
    h = Conv(self.out_channels, (3, 3), padding=1, kernel_init=zero_init, name="conv_out", kernels=self.kernels)(h)
    return h.astype(jnp.float32)
