"""The noise-conditional classifier of classifier guidance (Dhariwal & Nichol 2021, Sec. 4 and App. C): the encoder
half of the U-Net, conditioned on the time step, followed by attention pooling; it returns class logits for x_t."""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffusion_jax.models.layers import Conv, Dense, GroupNorm, multihead_attention
from diffusion_jax.models.unet import AttentionBlock, ResnetBlock, timestep_embedding


class AttentionPool(nn.Module):
  """Attention pooling (Radford et al. 2021, as ADM's classifier head): the mean token, with learned positional
  embeddings, attends over all positions; its output is projected to the logits."""
  out_dim: int
  num_heads: int = 1
  kernels: str = "auto"

  @nn.compact
  def __call__(self, h):
    b, hh, ww, c = h.shape
    if c % self.num_heads:
      raise ValueError(f"AttentionPool: {c} channels are not divisible by {self.num_heads} heads")
    tokens = h.reshape(b, hh * ww, c)
    tokens = jnp.concatenate([tokens.mean(1, keepdims=True), tokens], axis=1)
    tokens = tokens + self.param("positional_embedding", nn.initializers.normal(c ** -0.5), (hh * ww + 1, c))
    q = Dense(c, name="to_q", kernels=self.kernels)(tokens[:, :1])
    k, v = (Dense(c, name=f"to_{x}", kernels=self.kernels)(tokens) for x in "kv")
    o = multihead_attention(q, k, v, self.num_heads, self.kernels).reshape(b, c)
    return Dense(self.out_dim, name="to_out", kernels=self.kernels)(o)


class NoisyClassifier(nn.Module):
  """log p(y | x_t, t) up to normalisation. `timesteps` are in the diffusion network's own units
  (process.network_time)."""
  num_classes: int
  block_out_channels: Sequence[int] = (32, 64)
  layers_per_block: int = 1
  attn_resolutions: Sequence[int] = (4,)
  num_heads: int = 1
  norm_groups: int = 8
  dropout: float = 0.0
  kernels: str = "auto"  # models/kernels: how the layers compute (never what they compute)

  @nn.compact
  def __call__(self, x, timesteps, train: bool = False):
    ch0 = self.block_out_channels[0]
    temb = Dense(4 * ch0, name="time_embedding_1", kernels=self.kernels)(timestep_embedding(timesteps, ch0))
    temb = Dense(4 * ch0, name="time_embedding_2", kernels=self.kernels)(nn.silu(temb))
    res = lambda ch, name: ResnetBlock(ch, self.dropout, self.norm_groups, name=name, kernels=self.kernels)
    attn = lambda name: AttentionBlock(self.num_heads, self.norm_groups, name=name, kernels=self.kernels)
    h = Conv(ch0, (3, 3), padding=1, name="conv_in", kernels=self.kernels)(x)
    for i, ch in enumerate(self.block_out_channels):
      use_attn = h.shape[1] in self.attn_resolutions
      for j in range(self.layers_per_block):
        h = res(ch, f"down_{i}_resnet_{j}")(h, temb, train)
        if use_attn:
          h = attn(f"down_{i}_attn_{j}")(h)
      if i < len(self.block_out_channels) - 1:
        h = jnp.pad(h, ((0, 0), (0, 1), (0, 1), (0, 0)))
        h = Conv(ch, (3, 3), strides=2, padding=0, name=f"down_{i}_downsample", kernels=self.kernels)(h)
    ch = self.block_out_channels[-1]
    h = res(ch, "mid_resnet_0")(h, temb, train)
    h = attn("mid_attn")(h)
    h = res(ch, "mid_resnet_1")(h, temb, train)
    h = GroupNorm(self.norm_groups, 1e-6, silu=True, name="norm_out", kernels=self.kernels)(h)
    return AttentionPool(self.num_classes, self.num_heads, name="pool", kernels=self.kernels)(h)


def make_log_prob_fn(classifier, params, process):
  """log_prob(x_t, t, y) -> log p(y | x_t) [B] for continuous t of `process`, as make_model_fn is for the denoiser."""
  def log_prob(x, t, y):
    logits = classifier.apply({"params": params}, x, process.network_time(t))
    return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), y[:, None], 1)[:, 0]
  return log_prob
