"""The KL-regularised convolutional autoencoder of latent diffusion (Rombach et al. 2022, Sec. 3.1 and App. G), in the
block layout of diffusers' `AutoencoderKL` so Stable Diffusion's VAE maps onto it tensor for tensor: images are
encoded to a diagonal Gaussian over latents downsampled by f = 2^(len(block_out_channels) - 1), and decoded back."""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import Conv, GroupNorm, UpsampleConv
from diffusion_jax.models.remat import remat
from diffusion_jax.models.unet import AttentionBlock, ResnetBlock


class _Coder(nn.Module):
  """The fields an encoder and a decoder share."""
  out_channels: int
  block_out_channels: Sequence[int]
  layers_per_block: int
  groups: int
  eps: float
  kernels: str = "auto"
  remat: str = "none"


class Encoder(_Coder):
  """conv_in, per level: ResNet blocks then a stride-2 conv (not at the last level), mid ResNet-attention-ResNet,
  GroupNorm-SiLU-conv_out to `out_channels` (mean and log-variance of the latents)."""

  @nn.compact
  def __call__(self, x):
    res = lambda ch, name: resnet_block(ch, self.groups, self.eps, self.kernels, self.remat, name)
    h = Conv(self.block_out_channels[0], (3, 3), padding=1, name="conv_in", kernels=self.kernels)(x)
    for i, ch in enumerate(self.block_out_channels):
      for j in range(self.layers_per_block):
        h = res(ch, f"down_{i}_resnet_{j}")(h, None, False)
      if i < len(self.block_out_channels) - 1:
        h = jnp.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))  # diffusers' Downsample2D(padding=0)
        h = Conv(ch, (3, 3), strides=2, padding=0, name=f"down_{i}_downsample", kernels=self.kernels)(h)
    h = mid_block(h, self.block_out_channels[-1], self.groups, self.eps, self.kernels, self.remat)
    h = GroupNorm(self.groups, self.eps, silu=True, name="conv_norm_out", kernels=self.kernels)(h)
    return Conv(self.out_channels, (3, 3), padding=1, name="conv_out", kernels=self.kernels)(h)


class Decoder(_Coder):
  """conv_in, mid ResNet-attention-ResNet, per level (deepest first): ResNet blocks then nearest 2x upsampling and a
  conv (not at the last level), GroupNorm-SiLU-conv_out to image channels."""

  @nn.compact
  def __call__(self, z):
    res = lambda ch, name: resnet_block(ch, self.groups, self.eps, self.kernels, self.remat, name)
    h = Conv(self.block_out_channels[-1], (3, 3), padding=1, name="conv_in", kernels=self.kernels)(z)
    h = mid_block(h, self.block_out_channels[-1], self.groups, self.eps, self.kernels, self.remat)
    for i, ch in enumerate(reversed(self.block_out_channels)):
      for j in range(self.layers_per_block + 1):
        h = res(ch, f"up_{i}_resnet_{j}")(h, None, False)
      if i < len(self.block_out_channels) - 1:
        h = UpsampleConv(ch, name=f"up_{i}_upsample", kernels=self.kernels)(h)  # nearest-neighbour 2x, 3x3 conv
    h = GroupNorm(self.groups, self.eps, silu=True, name="conv_norm_out", kernels=self.kernels)(h)
    return Conv(self.out_channels, (3, 3), padding=1, name="conv_out", kernels=self.kernels)(h)


def resnet_block(ch, groups, eps, kernels, policy, name):
  """A ResNet block without time embedding, rematerialised under `policy` (models/remat)."""
  return remat(ResnetBlock, policy, (3,))(ch, groups=groups, eps=eps, name=name, kernels=kernels)


def mid_block(h, ch, groups, eps, kernels, policy="none"):
  """ResNet, single-head self-attention, ResNet (call inside a compact method), each block under remat `policy`."""
  h = resnet_block(ch, groups, eps, kernels, policy, "mid_resnet_0")(h, None, False)
  h = remat(AttentionBlock, policy)(1, groups, eps, name="mid_attn", kernels=kernels)(h)
  return resnet_block(ch, groups, eps, kernels, policy, "mid_resnet_1")(h, None, False)


class AutoencoderKL(nn.Module):
  """encode(x) -> (mean, logvar) of q(z | x); decode(z) -> x; __call__(x, rng) -> (reconstruction of a sample
  z ~ q(z | x), mean, logvar)."""
  out_channels: int
  block_out_channels: Sequence[int] = (32, 64)
  layers_per_block: int = 1
  latent_channels: int = 4
  norm_groups: int = 32
  norm_eps: float = 1e-6
  kernels: str = "auto"  # models/kernels: how the layers compute (never what they compute)
  remat: str = "none"  # models/remat: which activations each ResNet / attention block keeps for the backward pass

  def setup(self):
    kw = dict(block_out_channels=self.block_out_channels, layers_per_block=self.layers_per_block,
              groups=self.norm_groups, eps=self.norm_eps, remat=self.remat)
    self.encoder = Encoder(2 * self.latent_channels, **kw, kernels=self.kernels)
    self.quant_conv = Conv(2 * self.latent_channels, (1, 1), kernels=self.kernels)
    self.post_quant_conv = Conv(self.latent_channels, (1, 1), kernels=self.kernels)
    self.decoder = Decoder(self.out_channels, **kw, kernels=self.kernels)

  @property
  def downsampling(self):
    return 2 ** (len(self.block_out_channels) - 1)

  def encode(self, x):
    mean, logvar = jnp.split(self.quant_conv(self.encoder(x)), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)  # as diffusers' DiagonalGaussianDistribution

  def decode(self, z):
    return self.decoder(self.post_quant_conv(z))

  def __call__(self, x, rng):
    mean, logvar = self.encode(x)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
    return self.decode(z), mean, logvar


def kl_to_standard_normal(mean, logvar):
  """KL(N(mean, exp(logvar)) || N(0, I)) per example, summed over the latent dimensions."""
  return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=tuple(range(1, mean.ndim)))
