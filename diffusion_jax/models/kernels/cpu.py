"""The CPU kernel set: the operations whose stock XLA CPU code is slow, rewritten for it. Bias and normalisation
gradients sum as matrix products, a layer's output gradient is computed once for all its readers, 3x3 convolutions
take Winograd's F(4x4, 3x3) where there is enough work, upsampling + convolution takes the sub-pixel form, GroupNorm
has a hand-derived VJP, and attention is a fused broadcast form for short sequences or blocked_attention in tiles
that stay in cache. Every function equals the xla set's to float32 rounding; chosen by kernels=cpu (or auto on a CPU
backend)."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models.kernels import xla
from diffusion_jax.models.kernels.blocked_attention import CPU_TILE, blocked_attention, heads_as_rows
from diffusion_jax.xla_flags import cpu_cores

F32 = jnp.float32


# XLA's CPU backend sums [..., C] arrays to [C] (bias gradients) far slower than it multiplies them by a vector of
# ones, so the backward passes below sum as matrix products.

def channel_sum(a):
  """a summed over every axis but the last, as ones @ a."""
  flat = a.reshape(-1, a.shape[-1])
  return jnp.ones((flat.shape[0],), a.dtype) @ flat


def spatial_sum(a):
  """a [B, ..., C] summed over its middle axes to [B, C], as a batch of ones @ a[b]."""
  flat = a.reshape(a.shape[0], -1, a.shape[-1])
  return jnp.einsum("bon,bnc->bc", jnp.ones((flat.shape[0], 1, flat.shape[1]), a.dtype), flat)


def materialize(a):
  """a, computed once. XLA's CPU fusion copies cheap elementwise producers into every consumer, so a layer's output
  gradient (a GroupNorm-SiLU backward plus skip additions) would be recomputed by each strided slice of the Winograd
  transforms and by each other reader. XLA never duplicates a division, and a / 1 is exact. The ones are
  iota(a.size) * 0 + 1 (a float32 iota: finite at any size) so that XLA can neither fold them nor turn the division
  into a multiplication by a broadcast reciprocal (which it would duplicate)."""
  return a / (jax.lax.iota(jnp.float32, a.size).reshape(a.shape) * 0 + 1).astype(a.dtype)


def _add_bias_bwd(bias, g):
  g = materialize(g)
  return g, channel_sum(g.astype(bias.dtype))


@jax.custom_vjp
def add_bias(y, bias):
  """y + bias along the last axis, in y's dtype; the bias gradient is channel_sum in the bias's own dtype (float32
  for float32 parameters under bfloat16 activations); the output gradient is materialized once for all its readers
  (the layer's input and weight gradients)."""
  return y + bias.astype(y.dtype)


add_bias.defvjp(lambda y, bias: (y + bias.astype(y.dtype), bias), _add_bias_bwd)


def conv(x, kernel, strides, padding):
  """xla.conv, by winograd_conv3x3 for 3x3 stride-1 'same' convolutions where use_winograd."""
  same = padding == "SAME" or list(padding) == [(1, 1), (1, 1)]
  if kernel.shape[:2] == (3, 3) and tuple(strides) == (1, 1) and same and use_winograd(x, kernel.shape[-1]):
    return winograd_conv3x3(x, kernel.astype(x.dtype))
  return xla.conv(x, kernel, strides, padding)


def _conv(x, kernel, padding="VALID"):  # stride 1, NHWC
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=xla.DIMENSIONS)


# Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray 2016, "Fast algorithms for convolutional neural networks"):
# each 4x4 output tile is A^T [(G g G^T) * (B^T d B)] A for its 6x6 input tile d, 36 multiplications per tile and
# channel pair instead of 144, so the 3x3 convolution becomes 36 matrix products [tiles, I] @ [I, O].
_WINO_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0),
            (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_WINO_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
           (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_WINO_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))


def _tile_grid(a):  # (nh, nw): the 4x4 output tiles covering the map of a [B, H, W, C]
  return -(-a.shape[1] // 4), -(-a.shape[2] // 4)


def _work_per_core(x, features):
  """4x4 tiles x input x output channels per device for the 3x3 convolution of x [B, H, W, I] to `features` channels
  when each JAX device has one core (xla_flags.set_cpu_flags(devices=cores)) and its share of the batch; 0 for fewer
  than 32 input or output channels (a 3-channel conv_in, where Winograd's transforms cost more than they save); None
  on devices spanning several cores."""
  devices = jax.device_count()
  if devices < cpu_cores() or x.shape[0] % devices:
    return None
  tiles = x.shape[0] // devices * math.prod(_tile_grid(x))
  return tiles * x.shape[-1] * features if min(x.shape[-1], features) >= 32 else 0


def use_winograd(x, features):
  """Whether the 3x3 convolution of x [B, H, W, I] to `features` channels takes Winograd: for float32 only (the
  transforms' coefficients, up to 8, amplify bfloat16's rounding), given enough work per device: with one JAX device
  per core, _work_per_core of at least 2^16 (e.g. 16 digits images of 8x8x32); on a device spanning several cores,
  whose direct convolution uses them all while Winograd's 36 small products do not, at least 64 channels and 256
  tiles (e.g. 8 images of 32x32). XLA's direct convolution is faster for smaller maps."""
  if x.dtype != jnp.float32:
    return False
  work = _work_per_core(x, features)
  if work is not None:
    return work >= 2 ** 16
  tiles = x.shape[0] * math.prod(_tile_grid(x))
  return x.shape[-1] >= 64 and tiles >= 256


def winograd_trains(x, features):
  """Whether training takes Winograd's forward pass and gradients too (winograd_conv3x3's VJP): with one JAX device
  per core and _work_per_core of at least 2^20 (e.g. the medium U-Net's maps of 16 images); smaller maps, and devices
  spanning several cores, train faster on XLA's direct convolution."""
  return (_work_per_core(x, features) or 0) >= 2 ** 20


def _combine(coefs, terms):
  """sum_k coefs[k] terms[k], skipping zero coefficients (the transforms are sparse)."""
  out = None
  for c, t in zip(coefs, terms):
    if c:
      out = c * t if out is None else out + c * t
  return out


def _winograd_input(x):
  """B^T d B for the 6x6 input tile d of every 4x4 output tile: [36, B nh nw, I]."""
  b, h, w, c = x.shape
  nh, nw = _tile_grid(x)  # zero rows / columns beyond the map (-h % 4) change no output inside it
  xp = jnp.pad(x, ((0, 0), (1, 4 * nh - h + 1), (1, 4 * nw - w + 1), (0, 0)))
  rows = [xp[:, k:k + 4 * nh - 3:4] for k in range(6)]  # row k of every tile: [B, nh, 4 nw + 2, I]
  rows = [_combine(bt, rows) for bt in _WINO_BT]  # B^T d
  v = jnp.stack([jnp.stack([_combine(bt, [r[:, :, k:k + 4 * nw - 3:4] for k in range(6)]) for bt in _WINO_BT])
                 for r in rows])  # B^T d B: [6, 6, B, nh, nw, I]
  return v.reshape(36, b * nh * nw, c)


def _winograd_g(dtype):  # [36, 9]: G g G^T for every channel pair as one product with the flattened 3x3 kernel
  return jnp.asarray(np.kron(_WINO_G, _WINO_G), dtype)


def _winograd_conv(x, kernel):
  b, h, w, c = x.shape
  nh, nw = _tile_grid(x)
  u = (_winograd_g(kernel.dtype) @ kernel.reshape(9, -1)).reshape(36, c, -1)
  m = jnp.einsum("tpi,tio->tpo", _winograd_input(x), u).reshape(6, 6, b, nh, nw, -1)
  y = [_combine(at, list(m)) for at in _WINO_AT]  # A^T M: 4 x [6, B, nh, nw, O]
  y = jnp.stack([jnp.stack([_combine(at, list(r)) for at in _WINO_AT], axis=3) for r in y], axis=2)
  return y.reshape(b, 4 * nh, 4 * nw, -1)[:, :h, :w]  # [B, nh, 4, nw, 4, O] -> [B, H, W, O]


def _winograd_kernel_grad(x, g):
  """The gradient of _winograd_conv(x, kernel) with respect to the kernel for the output gradient g [B, H, W, O]:
  the same transforms transposed, G^T [sum over tiles of (B^T d B) * (A g A^T)] G, 36 products [I, tiles] @
  [tiles, O]."""
  _, h, w, o = g.shape
  nh, nw = _tile_grid(g)
  gp = jnp.pad(g, ((0, 0), (0, 4 * nh - h), (0, 4 * nw - w), (0, 0)))
  at = np.asarray(_WINO_AT).T  # [6, 4]: A
  rows = [_combine(a, [gp[:, i::4] for i in range(4)]) for a in at]  # A g: 6 x [B, nh, 4 nw, O]
  dm = jnp.stack([jnp.stack([_combine(a, [r[:, :, j::4] for j in range(4)]) for a in at]) for r in rows])
  du = jnp.einsum("tpi,tpo->tio", _winograd_input(x), dm.reshape(36, -1, o))
  return (_winograd_g(du.dtype).T @ du.reshape(36, -1)).reshape(3, 3, x.shape[-1], o)


@jax.custom_vjp
def winograd_conv3x3(x, kernel):
  """The 3x3 convolution (stride 1, padding 1) of x [B, H, W, I] by kernel [3, 3, I, O] by Winograd's F(4x4, 3x3);
  equal to the direct convolution to float32 rounding (~1e-5 of the output's scale). Differentiated, it is Winograd's
  forward pass, input gradient (the flipped kernel's convolution) and kernel gradient (_winograd_kernel_grad) where
  winograd_trains, else XLA's direct convolution and its gradients."""
  return _winograd_conv(x, kernel)


def _winograd_fwd(x, kernel):
  return (_winograd_conv if winograd_trains(x, kernel.shape[-1]) else _conv3x3)(x, kernel), (x, kernel)


def _winograd_bwd(res, g):
  x, kernel = res
  if winograd_trains(x, kernel.shape[-1]):
    return _winograd_conv(g, kernel[::-1, ::-1].swapaxes(2, 3)), _winograd_kernel_grad(x, g)
  return jax.vjp(_conv3x3, x, kernel)[1](g)


_conv3x3 = functools.partial(_conv, padding=((1, 1), (1, 1)))
winograd_conv3x3.defvjp(_winograd_fwd, _winograd_bwd)


# Nearest-neighbour 2x upsampling then a 3x3 convolution (padding 1) equals, at each of the four output phases (a, b),
# a 2x2 convolution of the low-resolution input whose taps are sums of the 3x3 taps: 16 instead of 36 multiply-adds
# per output and input channel (the "sub-pixel" form). _PHASE_TAPS[a, u, r] = 1 when 3x3 row r lands on window row u.
_PHASE_TAPS = ((1, 0, 0), (0, 1, 1)), ((1, 1, 0), (0, 0, 1))


def _padded_conv2x2(x, kernel):
  """VALID 2x2 convolution of x zero-padded by 1: [B, H, W, I] -> [B, H + 1, W + 1, O]."""
  return _conv(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), kernel)


def _conv2x2_bwd(res, g):  # dx as the flipped kernel's VALID convolution of g: XLA's own transpose is far slower here
  x, kernel = res
  dx = _conv(g, kernel[::-1, ::-1].swapaxes(2, 3))
  return dx, jax.vjp(lambda k: _padded_conv2x2(x, k), kernel)[1](g)[0]


_conv2x2 = jax.custom_vjp(_padded_conv2x2)
_conv2x2.defvjp(lambda x, kernel: (_padded_conv2x2(x, kernel), (x, kernel)), _conv2x2_bwd)


def upsample_conv(x, kernel):
  """conv3x3(nearest_upsample_2x(x), kernel) with padding 1, for x [B, H, W, I] and kernel [3, 3, I, O], computed in
  the sub-pixel form."""
  b, h, w, _ = x.shape
  o = kernel.shape[-1]
  taps = jnp.asarray(_PHASE_TAPS, kernel.dtype)
  phase_kernel = jnp.einsum("aur,bvc,rcio->uviabo", taps, taps, kernel).reshape(2, 2, kernel.shape[2], 4 * o)
  phase_kernel = phase_kernel.astype(x.dtype)
  y = _conv2x2(x, phase_kernel).reshape(b, h + 1, w + 1, 2, 2, o)  # phase (a, b) at row i + a, column j + b
  rows = [jnp.stack([y[:, a:a + h, c:c + w, a, c] for c in (0, 1)], axis=3) for a in (0, 1)]  # [B, H, W, 2, O]
  return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, o)


def group_norm(x, scale, bias, groups, eps, silu):
  """xla.group_norm as gn (silu=False) or gn_silu, whose backward passes are derived by hand."""
  return (gn_silu if silu else gn)(x, scale, bias, groups, eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def gn(x, scale, bias, groups, eps):
  """(x - mean) / sqrt(var + eps) * scale + bias, mean and var over H, W and the channels of a group: per-channel sums
  over H*W (spatial_sum), then group sums, one pass; the backward pass is derived by hand in the same form."""
  return _gn_fwd(x, scale, bias, groups, eps)[0]


def _gn_per_channel(a, x):  # [B, G] -> [B, 1, ..., 1, C]
  return jnp.repeat(a, x.shape[-1] // a.shape[-1], axis=-1).reshape(x.shape[0], *(1,) * (x.ndim - 2), x.shape[-1])


def _gn_stats(x32, groups, eps):  # (mean, 1 / std), [B, G] each
  b = x32.shape[0]
  n = x32.size // (b * groups)  # elements per group
  mean = spatial_sum(x32).reshape(b, groups, -1).sum(-1) / n
  var = jnp.maximum(spatial_sum(jnp.square(x32)).reshape(b, groups, -1).sum(-1) / n - jnp.square(mean), 0.0)
  return mean, jax.lax.rsqrt(var + eps)


def _gn_apply(x32, scale, bias, mean, inv):
  inv_c = _gn_per_channel(inv, x32) * scale
  return x32 * inv_c + (bias - _gn_per_channel(mean, x32) * inv_c)


def _gn_fwd(x, scale, bias, groups, eps):
  x32 = x.astype(jnp.float32)
  mean, inv = _gn_stats(x32, groups, eps)
  return _gn_apply(x32, scale, bias, mean, inv).astype(x.dtype), (x, scale, mean, inv)


def _gn_bwd(groups, eps, res, g):
  """dx = inv (scale g - m1 - xhat m2), m1 = group mean of scale g, m2 = group mean of scale g xhat, from the
  per-(sample, channel) sums of g and g x."""
  x, scale, mean, inv = res
  b, c = x.shape[0], x.shape[-1]
  n = x.size // (b * groups)
  x32, g32 = x.astype(jnp.float32), g.astype(jnp.float32)
  sum_g, sum_gx = spatial_sum(g32), spatial_sum(g32 * x32)  # [B, C]
  mean_c, inv_c = (jnp.repeat(a, c // groups, axis=-1) for a in (mean, inv))  # [B, C]
  sum_gxhat = inv_c * (sum_gx - mean_c * sum_g)  # sum over H, W of g * xhat
  group = lambda a: jnp.repeat(a.reshape(b, groups, -1).sum(-1) / n, c // groups, axis=-1)  # group mean, per channel
  m1, m2 = group(scale * sum_g), group(scale * sum_gxhat)
  coef_g, coef_x = inv_c * scale, -inv_c * inv_c * m2
  const = inv_c * (inv_c * m2 * mean_c - m1)
  shape = (b,) + (1,) * (x.ndim - 2) + (c,)
  dx = g32 * coef_g.reshape(shape) + x32 * coef_x.reshape(shape) + const.reshape(shape)
  return dx.astype(x.dtype), jnp.sum(sum_gxhat, 0), jnp.sum(sum_g, 0)


gn.defvjp(_gn_fwd, _gn_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def gn_silu(x, scale, bias, groups, eps):
  """silu(gn(x, ...)) whose only residuals are gn's (x and the [B, G] statistics): the backward pass recomputes the
  normalised x and its sigmoid instead of reading them back from memory."""
  return _gns_fwd(x, scale, bias, groups, eps)[0]


def _gns_fwd(x, scale, bias, groups, eps):
  x32 = x.astype(jnp.float32)
  mean, inv = _gn_stats(x32, groups, eps)
  return jax.nn.silu(_gn_apply(x32, scale, bias, mean, inv)).astype(x.dtype), (x, scale, bias, mean, inv)


def _gns_bwd(groups, eps, res, g):
  x, scale, bias, mean, inv = res
  z = _gn_apply(x.astype(jnp.float32), scale, bias, mean, inv)
  s = jax.nn.sigmoid(z)
  gz = g.astype(jnp.float32) * s * (1 + z * (1 - s))  # silu'(z) = s (1 + z (1 - s))
  return _gn_bwd(groups, eps, (x, scale, mean, inv), gz)


gn_silu.defvjp(_gns_fwd, _gns_bwd)


def attention(q, k, v):
  """softmax(q k^T / sqrt(d)) v of each head for q [B, Nq, H, D] and k, v [B, Nk, H, D]: short_attention for short
  sequences of narrow heads (Nq Nk <= 1024 and D <= 32, e.g. a 4x4 feature map), blocked_attention in cache-sized
  tiles otherwise."""
  if q.shape[1] * k.shape[1] <= 1024 and q.shape[-1] <= 32:
    return short_attention(q, k, v)
  return heads_as_rows(lambda *a: blocked_attention(*a, CPU_TILE), q, k, v)


def short_attention(q, k, v):
  """Attention as broadcast products and sums over q [B, Nq, H, D], k, v [B, Nk, H, D], which XLA fuses, with no
  transpose of the heads: faster on a CPU than XLA's batched products of small matrices, forward and backward, and
  far slower for long sequences. Float32 scores, softmax and sums, as in blocked_attention."""
  q32, k32, v32 = (a.astype(F32) for a in (q, k, v))
  s = jnp.sum(q32[:, :, None] * k32[:, None], axis=-1) / math.sqrt(q.shape[-1])  # [B, Nq, Nk, H]
  p = jax.nn.softmax(s, axis=2)
  return jnp.sum(p[..., None] * v32[:, None], axis=2).astype(q.dtype)
