"""The stock kernel set: XLA's convolution, GroupNorm in jnp differentiated by JAX, and jax.nn.dot_product_attention
(cuDNN's fused attention on GPUs where it applies). The default on GPUs and TPUs, and the reference the other sets are
tested against."""
import jax
import jax.numpy as jnp

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def conv(x, kernel, strides, padding):
  """The convolution of x [B, H, W, I] by kernel [kh, kw, I, O] in x's dtype; padding a string or [(lo, hi), ...]."""
  return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), strides, padding, dimension_numbers=DIMENSIONS)


def add_bias(y, bias):
  """y + bias along the last axis, rounded to y's dtype; added in float32, so that under bfloat16 activations the
  bias gradient is summed in float32."""
  return (y.astype(jnp.float32) + bias).astype(y.dtype)


def upsample_conv(x, kernel):
  """conv3x3(nearest_upsample_2x(x), kernel) with padding 1."""
  x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return conv(x, kernel, (1, 1), ((1, 1), (1, 1)))


def group_norm(x, scale, bias, groups, eps, silu):
  """GroupNorm (Wu & He 2018) of x [B, ..., C] with float32 statistics over the positions and the channels of each
  group, then scale and bias (and SiLU when silu); in x's dtype."""
  c = x.shape[-1]
  g = x.astype(jnp.float32).reshape(*x.shape[:-1], groups, c // groups)
  axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
  mean = jnp.mean(g, axes, keepdims=True)
  var = jnp.mean(jnp.square(g - mean), axes, keepdims=True)
  y = ((g - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape) * scale + bias
  return (jax.nn.silu(y) if silu else y).astype(x.dtype)


def attention(q, k, v):
  """softmax(q k^T / sqrt(d)) v of each head for q [B, Nq, H, D] and k, v [B, Nk, H, D]."""
  return jax.nn.dot_product_attention(q, k, v)
