"""The DDPM U-Net (Ho et al. 2020) in the block layout of diffusers' `UNet2DModel`, so released checkpoints such as
`ddpm-cifar10-32` map onto it one tensor to one tensor; plus scale-shift and class conditioning (null label = num_classes)."""
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models.layers import Conv, Dense, GroupNorm, blocked_attention, class_conditioning

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

  @nn.compact
  def __call__(self, x, temb, train):
    h = Conv(self.out_channels, (3, 3), padding=1, name="conv1")(nn.silu(GroupNorm(self.groups, self.eps, name="norm1")(x)))
    if temb is not None:
      emb = Dense(self.out_channels * (2 if self.scale_shift else 1), name="time_emb_proj")(nn.silu(temb))
      emb = emb[:, None, None, :]
    h = GroupNorm(self.groups, self.eps, name="norm2")(h + emb if temb is not None and not self.scale_shift else h)
    if temb is not None and self.scale_shift:
      scale, shift = jnp.split(emb, 2, axis=-1)
      h = h * (1 + scale) + shift
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = Conv(self.out_channels, (3, 3), padding=1, kernel_init=zero_init, name="conv2")(h)
    if x.shape[-1] != self.out_channels:
      x = Conv(self.out_channels, (1, 1), name="conv_shortcut")(x)
    return x + h


class AttentionBlock(nn.Module):
  """Spatial self-attention with a residual connection (GroupNorm, q/k/v projections, output projection)."""
  num_heads: int = 1
  groups: int = 32
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    b, hgt, wid, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"AttentionBlock: {c} channels are not divisible by {self.num_heads} heads")
    d = c // self.num_heads
    h = GroupNorm(self.groups, self.eps, name="group_norm")(x).reshape(b, hgt * wid, c)
    heads = lambda a: a.reshape(b, hgt * wid, self.num_heads, d).transpose(0, 2, 1, 3).reshape(b * self.num_heads, hgt * wid, d)
    q, k, v = (heads(Dense(c, name=n)(h)) for n in ("to_q", "to_k", "to_v"))
    o = blocked_attention(q, k, v)
    o = o.reshape(b, self.num_heads, hgt * wid, d).transpose(0, 2, 1, 3).reshape(b, hgt * wid, c)
    return x + Dense(c, kernel_init=zero_init, name="to_out")(o).reshape(b, hgt, wid, c)


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

  @nn.compact
  def __call__(self, x, timesteps, y: Optional[jnp.ndarray] = None, train: bool = False):
    ch0 = self.block_out_channels[0]
    temb = timestep_embedding(timesteps, ch0, self.flip_sin_to_cos, self.freq_shift)
    temb = Dense(4 * ch0, name="time_embedding_1")(temb)
    temb = Dense(4 * ch0, name="time_embedding_2")(nn.silu(temb))
    temb = class_conditioning(temb, y, self.num_classes, "U-Net")

    res = lambda **kw: ResnetBlock(dropout=self.dropout, groups=self.norm_groups, eps=self.norm_eps,
                                   scale_shift=self.scale_shift, **kw)
    attn = lambda **kw: AttentionBlock(self.num_heads, self.norm_groups, self.norm_eps, **kw)
    n = len(self.block_out_channels)

    h = Conv(ch0, (3, 3), padding=1, name="conv_in")(x)
    skips = [h]
    for i, ch in enumerate(self.block_out_channels):
      use_attn = h.shape[1] in self.attn_resolutions
      for j in range(self.layers_per_block):
        h = res(out_channels=ch, name=f"down_{i}_resnet_{j}")(h, temb, train)
        if use_attn:
          h = attn(name=f"down_{i}_attn_{j}")(h)
        skips.append(h)
      if i < n - 1:
        h = jnp.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))  # TF "SAME" for stride 2, as in Ho et al.
        h = Conv(ch, (3, 3), strides=2, padding=0, name=f"down_{i}_downsample")(h)
        skips.append(h)

    ch = self.block_out_channels[-1]
    h = res(out_channels=ch, name="mid_resnet_0")(h, temb, train)
    h = attn(name="mid_attn")(h)
    h = res(out_channels=ch, name="mid_resnet_1")(h, temb, train)

    for i, ch in enumerate(reversed(self.block_out_channels)):
      use_attn = h.shape[1] in self.attn_resolutions
      for j in range(self.layers_per_block + 1):
        h = res(out_channels=ch, name=f"up_{i}_resnet_{j}")(jnp.concatenate([h, skips.pop()], axis=-1), temb, train)
        if use_attn:
          h = attn(name=f"up_{i}_attn_{j}")(h)
      if i < n - 1:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour 2x
        h = Conv(ch, (3, 3), padding=1, name=f"up_{i}_upsample")(h)
    assert not skips

    h = nn.silu(GroupNorm(self.norm_groups, self.norm_eps, name="conv_norm_out")(h))
    return Conv(self.out_channels, (3, 3), padding=1, kernel_init=zero_init, name="conv_out")(h)
