"""DDPM++ / NCSN++ (Song et al. 2021, Sec. 4.4 and App. H): the score-SDE U-Net with BigGAN-style residual blocks,
skip rescaling by 1/sqrt(2), FIR resampling, progressive input / output pyramids and Gaussian Fourier time features.
The network predicts eps (= -sigma_t * score), which is Song et al.'s `scale_by_sigma` parametrisation up to sign."""
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models.layers import (Conv, Dense, GroupNorm, UpsampleConv, class_conditioning,
                                         multihead_attention)
from diffusion_jax.models.remat import remat
from diffusion_jax.models.unet import timestep_embedding

PROGRESSIVE = ("none", "output_skip")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")


def _init(scale):
  """DDPM initialisation: variance scaling (fan_avg, uniform); scale 0 means zeros (Song et al.'s init_scale=0)."""
  return nn.initializers.variance_scaling(scale, "fan_avg", "uniform") if scale else nn.initializers.zeros


def conv(ch, k=3, init_scale=1.0, padding=None, **kw):
  return Conv(ch, (k, k), padding=k // 2 if padding is None else padding, kernel_init=_init(init_scale), **kw)


def groups(ch):
  return min(ch // 4, 32)


def _fir_kernel(k):
  k = np.outer(k, k).astype(np.float32)
  return k / k.sum()


def _depthwise(x, k, strides, padding, lhs_dilation=(1, 1)):
  c = x.shape[-1]
  w = jnp.tile(jnp.asarray(k)[:, :, None, None], (1, 1, 1, c))
  return jax.lax.conv_general_dilated(x, w, strides, padding, lhs_dilation=lhs_dilation,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


def fir_downsample(x, k=(1, 3, 3, 1)):
  """upfirdn2d with down=2 (Karras et al. 2020): blur with the normalised outer(k, k), then keep every second pixel."""
  p = len(k) - 2
  pad = ((p + 1) // 2, p // 2)
  return _depthwise(x, _fir_kernel(k), (2, 2), (pad, pad))


def fir_upsample(x, k=(1, 3, 3, 1)):
  """upfirdn2d with up=2: zero-insertion then blur with 4 outer(k, k) / sum (gain 1)."""
  p = len(k) - 2
  pad = ((p + 1) // 2 + 1, p // 2 + 1)  # the dilated input lacks upfirdn's trailing zero: one more on the right
  return _depthwise(x, 4.0 * _fir_kernel(k), (1, 1), (pad, pad), lhs_dilation=(2, 2))


def naive_downsample(x):
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def naive_upsample(x):
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class FIRDownConv(nn.Module):
  """3x3 convolution with stride 2 after an FIR blur (score_sde's `Conv2d(down=True)`), with bias."""
  out_ch: int
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x):
    p = (len(self.fir_kernel) - 2) + 2
    pad = ((p + 1) // 2, p // 2)
    x = _depthwise(x, _fir_kernel(self.fir_kernel), (1, 1), (pad, pad))
    return Conv(self.out_ch, (3, 3), strides=2, padding="VALID", kernel_init=_init(1.0), name="conv",
                kernels=self.kernels)(x)


class ResBlock(nn.Module):
  """DDPM++ residual block (Song et al. 2021): GN-act-conv, + Dense(act(temb)), GN-act-dropout-conv; with `resample`
  ('up' / 'down') the BigGAN variant resamples both branches (FIR or naive); the sum is scaled by 1/sqrt(2)."""
  out_ch: int
  dropout: float = 0.0
  resample: Optional[str] = None
  biggan: bool = True
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True
  init_scale: float = 0.0
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x, temb, train):
    k = self.kernels
    h = GroupNorm(groups(x.shape[-1]), 1e-6, silu=True, name="GroupNorm_0", kernels=k)(x)
    fold_up = self.resample == "up" and not self.fir  # the naive upsampling of h folded into its convolution
    if self.resample:
      if self.fir:
        f = fir_upsample if self.resample == "up" else fir_downsample
        f = lambda a, f=f: f(a, self.fir_kernel)
      else:
        f = naive_upsample if self.resample == "up" else naive_downsample
      h, x = (h if fold_up else f(h)), f(x)
    h = (UpsampleConv(self.out_ch, _init(1.0), name="Conv_0", kernels=k) if fold_up else
         conv(self.out_ch, name="Conv_0", kernels=k))(h)
    h = h + Dense(self.out_ch, kernel_init=_init(1.0), name="Dense_0", kernels=k)(nn.silu(temb))[:, None, None, :]
    h = GroupNorm(groups(self.out_ch), 1e-6, silu=True, name="GroupNorm_1", kernels=k)(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv(self.out_ch, init_scale=self.init_scale, name="Conv_1", kernels=k)(h)
    if x.shape[-1] != self.out_ch or self.resample:
      x = (conv(self.out_ch, 1, name="Conv_2", kernels=k) if self.biggan else
           Dense(self.out_ch, name="NIN_0", kernels=k))(x)
    return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over positions (DDPM), with skip rescaling."""
  skip_rescale: bool = True
  init_scale: float = 0.0
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    h = GroupNorm(groups(c), 1e-6, name="GroupNorm_0", kernels=self.kernels)(x).reshape(b, hh * ww, c)
    q, k, v = (Dense(c, kernel_init=_init(1.0), name=f"NIN_{i}", kernels=self.kernels)(h) for i in range(3))
    o = multihead_attention(q, k, v, 1, self.kernels)
    o = Dense(c, kernel_init=_init(self.init_scale), name="NIN_3", kernels=self.kernels)(o)
    x = x + o.reshape(x.shape)
    return x / math.sqrt(2.0) if self.skip_rescale else x


class NCSNpp(nn.Module):
  """DDPM++ (embedding_type='positional', fir=False) and NCSN++ (fourier, fir=True, progressive_input='residual').
  `timesteps` are (N - 1) t for positional features (score_sde's VP convention) and sigma_t for Fourier features,
  whose input is log sigma_t."""
  out_channels: int
  nf: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 4
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  resblock_type: str = "biggan"  # biggan | ddpm
  fir: bool = False
  fir_kernel: Sequence[int] = (1, 3, 3, 1)
  skip_rescale: bool = True
  init_scale: float = 0.0
  embedding_type: str = "positional"  # positional | fourier
  fourier_scale: float = 16.0
  progressive: str = "none"
  progressive_input: str = "none"
  progressive_combine: str = "sum"  # sum | cat
  num_classes: int = 0
  kernels: str = "auto"  # models/kernels: how the layers compute (never what they compute)
  remat: str = "none"  # models/remat: which activations each residual / attention block keeps for the backward pass

  def check(self):
    for field, value, valid in [("resblock_type", self.resblock_type, ("biggan", "ddpm")),
                                ("embedding_type", self.embedding_type, ("positional", "fourier")),
                                ("progressive", self.progressive, PROGRESSIVE),
                                ("progressive_input", self.progressive_input, PROGRESSIVE_INPUT),
                                ("progressive_combine", self.progressive_combine, ("sum", "cat"))]:
      if value not in valid:
        raise ValueError(f"Unknown model.{field} {value!r}; valid: {', '.join(valid)}")
    if self.fir and self.resblock_type == "ddpm":
      raise ValueError("model.fir=True needs resblock_type='biggan' (FIR resampling lives in the BigGAN blocks)")

  @nn.compact
  def __call__(self, x, timesteps, y=None, train=False):
    self.check()
    nf = self.nf
    if self.embedding_type == "fourier":  # Gaussian Fourier features of log sigma (Tancik et al. 2020)
      W = jax.lax.stop_gradient(self.param("fourier_W", nn.initializers.normal(self.fourier_scale), (nf,)))
      proj = jnp.log(timesteps.astype(jnp.float32))[:, None] * W[None] * 2 * np.pi
      temb = jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)
    else:
      temb = timestep_embedding(timesteps, nf)
    temb = Dense(4 * nf, kernel_init=_init(1.0), name="temb_0", kernels=self.kernels)(temb)
    temb = Dense(4 * nf, kernel_init=_init(1.0), name="temb_1", kernels=self.kernels)(nn.silu(temb))
    temb = class_conditioning(temb, y, self.num_classes, "NCSN++")

    biggan = self.resblock_type == "biggan"
    res = lambda out_ch, name, resample=None: remat(ResBlock, self.remat, (3,))(
        out_ch, self.dropout, resample, biggan, self.fir, self.fir_kernel, self.skip_rescale, self.init_scale,
        self.kernels, name=name)
    attn = lambda name: remat(AttnBlock, self.remat)(self.skip_rescale, self.init_scale, name=name,
                                                     kernels=self.kernels)
    n = len(self.ch_mult)
    channels = x.shape[-1]

    pyramid = x
    hs = [conv(nf, name="conv_in", kernels=self.kernels)(x)]
    for i, mult in enumerate(self.ch_mult):
      for j in range(self.num_res_blocks):
        h = res(nf * mult, f"down_{i}_res_{j}")(hs[-1], temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn(f"down_{i}_attn_{j}")(h)
        hs.append(h)
      if i == n - 1:
        break
      ch = hs[-1].shape[-1]
      if biggan:
        h = res(ch, f"down_{i}_downsample", "down")(hs[-1], temb, train)
      else:  # DDPM: pad (0, 1) and a stride-2 3x3 convolution
        h = conv(ch, padding=0, strides=2, name=f"down_{i}_downsample", kernels=self.kernels)(
            jnp.pad(hs[-1], ((0, 0), (0, 1), (0, 1), (0, 0))))
      if self.progressive_input == "input_skip":
        pyramid = fir_downsample(pyramid, self.fir_kernel) if self.fir else naive_downsample(pyramid)
        skip = Dense(ch, kernel_init=_init(1.0), name=f"down_{i}_combine", kernels=self.kernels)(pyramid)
        h = h + skip if self.progressive_combine == "sum" else jnp.concatenate([skip, h], -1)
      elif self.progressive_input == "residual":
        pyramid = (FIRDownConv(ch, self.fir_kernel, self.kernels, name=f"down_{i}_pyramid")(pyramid) if self.fir else
                   conv(ch, padding=0, strides=2, name=f"down_{i}_pyramid", kernels=self.kernels)(
                       jnp.pad(pyramid, ((0, 0), (0, 1), (0, 1), (0, 0)))))
        h = pyramid = (pyramid + h) / math.sqrt(2.0) if self.skip_rescale else pyramid + h
      hs.append(h)

    h = hs[-1]
    h = res(h.shape[-1], "mid_res_0")(h, temb, train)
    h = attn("mid_attn")(h)
    h = res(h.shape[-1], "mid_res_1")(h, temb, train)

    out_pyramid = None
    for i in reversed(range(n)):
      for j in range(self.num_res_blocks + 1):
        h = res(nf * self.ch_mult[i], f"up_{i}_res_{j}")(jnp.concatenate([h, hs.pop()], -1), temb, train)
      if h.shape[1] in self.attn_resolutions:
        h = attn(f"up_{i}_attn")(h)
      if self.progressive == "output_skip":
        if out_pyramid is not None:
          out_pyramid = fir_upsample(out_pyramid, self.fir_kernel) if self.fir else naive_upsample(out_pyramid)
        ph = GroupNorm(groups(h.shape[-1]), 1e-6, silu=True, name=f"up_{i}_pyramid_norm", kernels=self.kernels)(h)
        ph = conv(channels, init_scale=self.init_scale, name=f"up_{i}_pyramid_conv", kernels=self.kernels)(ph)
        out_pyramid = ph if out_pyramid is None else out_pyramid + ph
      if i:
        if biggan:
          h = res(h.shape[-1], f"up_{i}_upsample", "up")(h, temb, train)
        else:
          # naive_upsample, then conv
          h = UpsampleConv(h.shape[-1], _init(1.0), name=f"up_{i}_upsample", kernels=self.kernels)(h)
    assert not hs

    if self.progressive == "output_skip":
      return out_pyramid
    h = GroupNorm(groups(h.shape[-1]), 1e-6, silu=True, name="norm_out", kernels=self.kernels)(h)
    return conv(self.out_channels, init_scale=self.init_scale, name="conv_out", kernels=self.kernels)(h)
