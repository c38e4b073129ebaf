"""U-ViT (Bao et al. 2023, "All are Worth Words: A ViT Backbone for Diffusion Models"): a ViT whose inputs are all
tokens (the time, the class label and the image's patches) with long skip connections from each shallow block to the
deep block that mirrors it (concatenation, then a linear layer), and a 3x3 convolution after unpatchifying, as in the
paper's released code (baofff/U-ViT libs/uvit.py)."""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.models.layers import Conv, Dense, labels_or_null
from diffusion_jax.models.remat import remat
from diffusion_jax.models.transformer import Attention
from diffusion_jax.models.unet import DTYPES, timestep_embedding
from diffusion_jax.models.vit import Mlp, PatchEmbed, check_patch, layer_norm, resolve_dims, unpatchify

linear_init = nn.initializers.truncated_normal(0.02)  # U-ViT's init of every linear layer and the positions

# (depth, width, heads) of the paper's Table 1 (U-ViT-S: 44M parameters, M: 131M, L: 287M, H: 501M); patch 2, 4 or 8
SIZES = {"S": (13, 512, 8), "S-Deep": (17, 512, 8), "M": (17, 768, 12), "L": (21, 1024, 16), "H": (29, 1152, 16)}
PATCHES = (2, 4, 8)


class UViTBlock(nn.Module):
  """A pre-norm transformer block (LayerNorm-attention, LayerNorm-MLP, each residual); skip=True first joins the
  long skip connection: x = Linear(concat(x, skip))."""
  heads: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = False
  skip: bool = False
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x, skip=None):
    d = x.shape[-1]
    if self.skip:
      x = Dense(d, linear_init, name="skip_linear", kernels=self.kernels)(jnp.concatenate([x, skip], -1))
    x = x + Attention(self.heads, d // self.heads, self.qkv_bias, linear_init, linear_init, name="attn",
                      kernels=self.kernels)(layer_norm(x, 1e-5, name="norm1"))
    return x + Mlp(int(d * self.mlp_ratio), kernel_init=linear_init, name="mlp",
                   kernels=self.kernels)(layer_norm(x, 1e-5, name="norm2"))


class UViT(nn.Module):
  """U-ViT by a named size (`size="M/2"`, or depth / hidden_size / num_heads / patch_size): depth // 2 shallow blocks,
  a middle block, depth // 2 deep blocks. Tokens [class (when num_classes > 0; y=None is the null label K), time,
  patches] with learned positions; the time token is the sinusoidal embedding (through an MLP with
  mlp_time_embed)."""
  out_channels: int
  size: str = ""
  depth: int = 0
  hidden_size: int = 0
  num_heads: int = 0
  patch_size: int = 0
  mlp_ratio: float = 4.0
  qkv_bias: bool = False
  mlp_time_embed: bool = False
  num_classes: int = 0
  conv_out: bool = True    # the 3x3 convolution after unpatchifying
  dtype: str = "float32"   # activations; "bfloat16": mixed precision (float32 parameters, norms, softmax, output)
  kernels: str = "auto"
  remat: str = "none"      # models/remat: which activations each transformer block keeps for the backward pass

  @nn.compact
  def __call__(self, x, timesteps, y: Optional[jnp.ndarray] = None, train: bool = False):
    if self.dtype not in DTYPES:
      raise ValueError(f"U-ViT dtype {self.dtype!r} is not supported; valid: {', '.join(DTYPES)}")
    depth, d, heads, p = resolve_dims(self, SIZES, PATCHES, "U-ViT")
    check_patch(x.shape, p, "U-ViT")
    b, h, w, _ = x.shape
    patches = PatchEmbed(d, p, name="patch_embed", kernels=self.kernels)(x.astype(self.dtype))
    time = timestep_embedding(timesteps, d, flip_sin_to_cos=True, freq_shift=0.0)
    if self.mlp_time_embed:
      time = Dense(4 * d, linear_init, name="time_embed_1", kernels=self.kernels)(time)
      time = Dense(d, linear_init, name="time_embed_2", kernels=self.kernels)(nn.silu(time))
    extras = [time[:, None]]
    labels = labels_or_null(y, self.num_classes, b, "U-ViT")
    if labels is not None:
      extras.insert(0, nn.Embed(self.num_classes + 1, d, name="label_emb")(labels)[:, None])
    tokens = jnp.concatenate([e.astype(self.dtype) for e in extras] + [patches], axis=1)
    pos = self.param("pos_embed", linear_init, (1, tokens.shape[1], d))
    tokens = tokens + pos.astype(self.dtype)

    block = lambda name, skip=False: remat(UViTBlock, self.remat)(heads, self.mlp_ratio, self.qkv_bias, skip,
                                                                  name=name, kernels=self.kernels)
    skips = []
    for i in range(depth // 2):
      tokens = block(f"in_blocks_{i}")(tokens)
      skips.append(tokens)
    tokens = block("mid_block")(tokens)
    for i in range(depth // 2):
      tokens = block(f"out_blocks_{i}", skip=True)(tokens, skips.pop())

    tokens = Dense(p * p * self.out_channels, linear_init, name="decoder_pred",
                   kernels=self.kernels)(layer_norm(tokens, 1e-5, name="norm"))
    out = unpatchify(tokens[:, len(extras):], p, h, w)
    if self.conv_out:
      out = Conv(self.out_channels, (3, 3), padding=1, name="final_layer", kernels=self.kernels)(out)
    return out.astype(jnp.float32)
