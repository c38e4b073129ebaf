"""DiT (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"): a ViT over p x p patches of the image (or
latent) with fixed 2-D sin-cos positions, conditioned on the timestep and class through adaLN-Zero blocks, as in the
paper's released code (facebookresearch/DiT models.py). Parameter names follow diffusers' DiTTransformer2DModel, whose
released checkpoints (facebook/DiT-XL-2-256) convert onto it (convert.py)."""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models.layers import Dense, class_conditioning
from diffusion_jax.models.remat import remat
from diffusion_jax.models.transformer import Attention
from diffusion_jax.models.unet import DTYPES, timestep_embedding
from diffusion_jax.models.vit import (Mlp, PatchEmbed, check_patch, layer_norm, resolve_dims, sincos_2d, unpatchify,
                                      xavier, xavier_qkv)

zeros = nn.initializers.zeros
# (depth, hidden size, heads) of the paper's Table 1; patch 2, 4 or 8 (DiT-XL/2: 675M parameters at 32x32x4)
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
PATCHES = (2, 4, 8)
FREQUENCY_CHANNELS = 256  # sinusoidal features of the timestep, before its MLP


def modulate(x, shift, scale):
  return x * (1 + scale) + shift


class DiTBlock(nn.Module):
  """adaLN-Zero (Peebles & Xie 2023, Sec. 3.2): shift, scale and gate of the attention and of the MLP regressed from
  the conditioning c by one zero-initialised layer, so that the block starts as the identity. The attention's
  LayerNorm has eps 1e-6, the MLP's `norm_eps` (1e-6 in DiT; diffusers' DiTTransformer2DModel uses 1e-5)."""
  heads: int
  mlp_ratio: float = 4.0
  norm_eps: float = 1e-6
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x, c):
    d = x.shape[-1]
    mod = Dense(6 * d, kernel_init=zeros, name="norm1_linear", kernels=self.kernels)(nn.silu(c))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod[:, None].astype(x.dtype), 6, -1)
    h = modulate(layer_norm(x, 1e-6, affine=False), shift_msa, scale_msa)
    x = x + gate_msa * Attention(self.heads, d // self.heads, True, xavier_qkv, xavier, name="attn1",
                                 kernels=self.kernels)(h)
    h = modulate(layer_norm(x, self.norm_eps, affine=False), shift_mlp, scale_mlp)
    return x + gate_mlp * Mlp(int(d * self.mlp_ratio), approximate=True, name="ff", kernels=self.kernels)(h)


class DiT(nn.Module):
  """DiT by a named size (`size="XL/2"`, or depth / hidden_size / num_heads / patch_size). Class labels 0..K-1 and
  the null label K of classifier-free guidance (y=None) are embedded and added to the timestep's embedding.
  learn_sigma=True adds C output channels for the variance, as DiT's ImageNet models: the call returns the
  prediction's C channels, full_output=True all 2C."""
  out_channels: int
  size: str = ""
  depth: int = 0
  hidden_size: int = 0
  num_heads: int = 0
  patch_size: int = 0
  mlp_ratio: float = 4.0
  num_classes: int = 0
  learn_sigma: bool = False
  freq_shift: float = 0.0  # the timestep features' frequency shift: 0 in DiT, 1 in diffusers' port
  norm_eps: float = 1e-6
  dtype: str = "float32"   # activations; "bfloat16": mixed precision (float32 parameters, norms, softmax, output)
  kernels: str = "auto"
  remat: str = "none"      # models/remat: which activations each transformer block keeps for the backward pass

  @nn.compact
  def __call__(self, x, timesteps, y: Optional[jnp.ndarray] = None, train: bool = False, full_output: bool = False):
    if self.dtype not in DTYPES:
      raise ValueError(f"DiT dtype {self.dtype!r} is not supported; valid: {', '.join(DTYPES)}")
    depth, d, heads, p = resolve_dims(self, SIZES, PATCHES, "DiT")
    check_patch(x.shape, p, "DiT")
    _, h, w, _ = x.shape
    t = timestep_embedding(timesteps, FREQUENCY_CHANNELS, flip_sin_to_cos=True, freq_shift=self.freq_shift)
    temb = Dense(d, kernel_init=nn.initializers.normal(0.02), name="time_embedding_1", kernels=self.kernels)(t)
    temb = Dense(d, kernel_init=nn.initializers.normal(0.02), name="time_embedding_2",
                 kernels=self.kernels)(nn.silu(temb))
    c = class_conditioning(temb, y, self.num_classes, "DiT", nn.initializers.normal(0.02))

    tokens = PatchEmbed(d, p, name="pos_embed", kernels=self.kernels)(x.astype(self.dtype))
    tokens = tokens + jnp.asarray(sincos_2d(d, h // p, w // p), self.dtype)
    for i in range(depth):
      tokens = remat(DiTBlock, self.remat)(heads, self.mlp_ratio, self.norm_eps, name=f"transformer_blocks_{i}",
                                           kernels=self.kernels)(tokens, c)

    shift, scale = jnp.split(Dense(2 * d, kernel_init=zeros, name="proj_out_1", kernels=self.kernels)(nn.silu(c))
                             [:, None].astype(self.dtype), 2, -1)
    tokens = modulate(layer_norm(tokens, 1e-6, affine=False), shift, scale)
    channels = self.out_channels * (2 if self.learn_sigma else 1)
    tokens = Dense(p * p * channels, kernel_init=zeros, name="proj_out_2", kernels=self.kernels)(tokens)
    out = unpatchify(tokens, p, h, w).astype(jnp.float32)
    return out if full_output else out[..., :self.out_channels]
