"""The layers every network is built from: nn.Conv / nn.Dense / nn.GroupNorm equivalents (same parameters, same
output), upsampling + convolution, multi-head attention and class conditioning. Each layer computes in its input's
dtype (float32 parameters cast to it, so bfloat16 activations give mixed precision) through the kernel set named by
its `kernels` field (models/kernels: config.model.kernels, default auto)."""
from typing import Callable, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models.kernels import get_kernels


class Dense(nn.Module):
  """nn.Dense (same parameters, same output; use_bias=False: no bias), in x's dtype."""
  features: int
  kernel_init: Callable = nn.initializers.lecun_normal()
  use_bias: bool = True
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    y = jnp.einsum("...i,io->...o", x, kernel.astype(x.dtype))
    if not self.use_bias:
      return y
    return get_kernels(self.kernels).add_bias(y, self.param("bias", nn.initializers.zeros, (self.features,)))


class Conv(nn.Module):
  """nn.Conv on NHWC (same parameters, same output; integer or string padding), in x's dtype."""
  features: int
  kernel_size: Sequence[int]
  strides: int = 1
  padding: Union[int, str] = "SAME"
  kernel_init: Callable = nn.initializers.lecun_normal()
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    nd = len(self.kernel_size)
    pad = self.padding if isinstance(self.padding, str) else [(self.padding, self.padding)] * nd
    ops = get_kernels(self.kernels)
    return ops.add_bias(ops.conv(x, kernel, (self.strides,) * nd, pad), bias)


class UpsampleConv(nn.Module):
  """Nearest-neighbour 2x upsampling then Conv(features, (3, 3), padding=1): the same parameters and output."""
  features: int
  kernel_init: Callable = nn.initializers.lecun_normal()
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    ops = get_kernels(self.kernels)
    return ops.add_bias(ops.upsample_conv(x, kernel), bias)


class GroupNorm(nn.Module):
  """GroupNorm (Wu & He 2018) on NHWC with nn.GroupNorm's parameters (scale, bias) and float32 statistics. silu=True
  returns silu(GroupNorm(x)) as one operation, the pairing of every ResNet block."""
  num_groups: int = 32
  epsilon: float = 1e-6
  silu: bool = False
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    if c % self.num_groups:
      raise ValueError(f"GroupNorm: {c} channels are not divisible by {self.num_groups} groups")
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    return get_kernels(self.kernels).group_norm(x, scale, bias, self.num_groups, self.epsilon, self.silu)


def multihead_attention(q, k, v, num_heads, kernels="auto"):
  """Attention of num_heads heads for q [B, Nq, C], k, v [B, Nk, C], channels split head-major (as torch's and flax's
  attention split them), float32 softmax; returns [B, Nq, C]."""
  b, c = q.shape[0], q.shape[-1]
  heads = lambda a: a.reshape(b, a.shape[1], num_heads, c // num_heads)
  return get_kernels(kernels).attention(heads(q), heads(k), heads(v)).reshape(b, -1, c)


def labels_or_null(y, num_classes, batch, network):
  """The labels of a class-conditional network: y, or the null label K (= num_classes) of classifier-free guidance for
  every example when y is None; an unconditional network (K = 0) refuses labels and gets None."""
  if not num_classes:
    if y is not None:
      raise ValueError(f"labels y were given to an unconditional {network} (set model.num_classes)")
    return None
  return jnp.full((batch,), num_classes, jnp.int32) if y is None else y


def class_conditioning(temb, y, num_classes, network, embedding_init=nn.linear.default_embed_init):
  """temb plus a learned embedding of the labels y (call inside a compact method); labels 0..K-1 and the null label K
  of classifier-free guidance, which y=None also selects. An unconditional network (K = 0) refuses labels."""
  y = labels_or_null(y, num_classes, temb.shape[0], network)
  if y is None:
    return temb
  return temb + nn.Embed(num_classes + 1, temb.shape[-1], embedding_init=embedding_init, name="class_embedding")(y)
