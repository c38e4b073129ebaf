"""The DINOv2 image encoder (Oquab et al. 2023) in Flax: the architecture of transformers' `Dinov2Model` (the
register-free facebook/dinov2-small / -base / -large / -giant, patch 14; SwiGLU MLPs for ViT-g), loaded from a Hugging
Face directory by name mapping, with the input path of FD_DINOv2 (Stein et al. 2023, "Exposing flaws of generative
model evaluation metrics"; dgm-eval and EDM2's calculate_metrics): bicubic resize to 224, ImageNet normalization.
The features are the CLS token of the final layernormed sequence (transformers' `pooler_output`), config.hidden_size-d
(1024 for ViT-L/14, the network of FD_DINOv2). Inference only."""
import dataclasses
import math
import os
import sys

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file

from diffusion_jax.models.clip_text import ACTIVATIONS
from diffusion_jax.models.state_dict import from_state_dict, hf_checkpoint

MODEL = "facebook/dinov2-large"  # ViT-L/14, the FD_DINOv2 network of Stein et al. 2023 and EDM2
MODELS = ", ".join(f"facebook/dinov2-{s}" for s in ("small", "base", "large", "giant"))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 224
HUB_INTERPOLATE_OFFSET = 0.1  # facebookresearch/dinov2's torch.hub models (those of dgm-eval and EDM2)


def _download_hint():
  return (f"download the Hugging Face model {MODEL} (ViT-L/14, the FD_DINOv2 network; or another of {MODELS}): "
          f"`hf download {MODEL} config.json model.safetensors --local-dir DIR`, and point config.eval.dinov2_weights "
          "at DIR (or at the .msgpack that `python -m diffusion_jax.evaluation.dinov2 DIR OUT.msgpack` writes). "
          "Nothing is downloaded here")


@dataclasses.dataclass(frozen=True)
class Dinov2Config:
  """The fields of transformers' Dinov2Config that the network uses (defaults: facebook/dinov2-large, ViT-L/14).
  `interpolate_offset` is not a transformers field: 0 resamples the position embeddings to the input's patch grid by
  size, as transformers' `Dinov2Embeddings.interpolate_pos_encoding`; HUB_INTERPOLATE_OFFSET (0.1) by the scale factor
  (grid + 0.1) / trained grid, as facebookresearch/dinov2's hub models (and transformers before the switch to sizes)."""
  hidden_size: int = 1024
  num_hidden_layers: int = 24
  num_attention_heads: int = 16
  mlp_ratio: float = 4
  patch_size: int = 14
  image_size: int = 518
  layer_norm_eps: float = 1e-6
  hidden_act: str = "gelu"
  layerscale_value: float = 1.0
  use_swiglu_ffn: bool = False
  qkv_bias: bool = True
  num_channels: int = 3
  interpolate_offset: float = 0.0

  @classmethod
  def from_dict(cls, d):
    """From a transformers Dinov2Model's config.json; other architectures and register tokens are refused."""
    found = f"model_type={d.get('model_type')!r}, architectures={d.get('architectures')}"
    if d.get("num_register_tokens", 0) or d.get("model_type") == "dinov2_with_registers":
      raise ValueError(f"config.json describes DINOv2 with register tokens ({found}, num_register_tokens="
                       f"{d.get('num_register_tokens')}), which this encoder does not implement: FD_DINOv2 uses the "
                       f"register-free {MODEL} (or another of {MODELS})")
    if d.get("model_type") != "dinov2":
      raise ValueError(f"config.json describes another network ({found}), not a DINOv2 image encoder: expected the "
                       f"config.json of {MODELS} (model_type 'dinov2'; FD_DINOv2 uses {MODEL})")
    if d.get("hidden_act", "gelu") not in ACTIVATIONS:
      raise ValueError(f"Unsupported hidden_act {d['hidden_act']!r}; supported: {', '.join(ACTIVATIONS)}")
    d = dict(d)
    for name in ("image_size", "patch_size"):  # an int, or [h, w] with h == w
      v = d.get(name)
      if isinstance(v, (list, tuple)):
        if len(set(v)) != 1:
          raise ValueError(f"Only square {name} is supported, got {v}")
        d[name] = v[0]
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def bicubic_matrix(in_size, out_size, scale_factor=None):
  """[out_size, in_size] matrix of torch's F.interpolate(mode='bicubic', align_corners=False, antialias=False) along
  one axis: Keys' cubic convolution (a = -0.75; Keys 1981) at source coordinates (i + 0.5) / s - 0.5, border pixels
  repeated, with s = scale_factor when given (torch then maps coordinates by it, not by the sizes), else out / in.
  Computed in float32 as torch's CPU kernel (upsample_bicubic2d) does."""
  f32 = np.float32
  a = f32(-0.75)
  inv = f32(1.0 / scale_factor) if scale_factor else f32(in_size) / f32(out_size)
  real = inv * (np.arange(out_size, dtype=f32) + f32(0.5)) - f32(0.5)
  index = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
  t = np.clip(real - index.astype(f32), f32(0), f32(1))
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
  weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], -1)
  taps = np.clip(index[:, None] + np.arange(-1, 3), 0, in_size - 1)
  matrix = np.zeros((out_size, in_size), np.float64)
  np.add.at(matrix, (np.repeat(np.arange(out_size), 4), taps.ravel()), weights.ravel())
  return matrix.astype(f32)


def interpolate_pos_encoding(pos_embed, height, width, patch_size, offset=0.0):
  """Position embeddings [1 + M * M, C] (CLS first, then the trained M x M grid) for pixel inputs height x width:
  the grid resampled bicubically to (height // patch_size, width // patch_size), as transformers'
  `Dinov2Embeddings.interpolate_pos_encoding` (offset 0: by size) or facebookresearch/dinov2's
  `interpolate_pos_encoding` (offset 0.1: by the scale factor (grid + offset) / M); unchanged for a square input of
  the trained grid (both implementations return it as it is)."""
  m = math.isqrt(pos_embed.shape[0] - 1)
  if m * m != pos_embed.shape[0] - 1:
    raise ValueError(f"{pos_embed.shape[0] - 1} patch position embeddings do not form a square grid")
  h, w = height // patch_size, width // patch_size
  if (h, w) == (m, m) and height == width:
    return pos_embed
  scale = lambda n: (n + offset) / m if offset else None
  mh, mw = bicubic_matrix(m, h, scale(h)), bicubic_matrix(m, w, scale(w))
  grid = pos_embed[1:].reshape(m, m, -1).astype(jnp.float32)
  grid = jnp.einsum("ij,jkc,lk->ilc", mh, grid, mw, precision=jax.lax.Precision.HIGHEST)
  return jnp.concatenate([pos_embed[:1], grid.reshape(h * w, -1).astype(pos_embed.dtype)])


class Attention(nn.Module):
  """Multi-head self-attention (Vaswani et al. 2017): softmax(q k^T / sqrt(d)) v, then the output projection."""
  config: Dinov2Config

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    b, n, c = x.shape
    heads = cfg.num_attention_heads
    q, k, v = (nn.Dense(c, use_bias=cfg.qkv_bias, name=f"{p}_proj")(x).reshape(b, n, heads, c // heads) for p in "qkv")
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(c // heads)
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v).reshape(b, n, c)
    return nn.Dense(c, name="o_proj")(out)


class Mlp(nn.Module):
  """fc1 -> act -> fc2, or SwiGLU (Shazeer 2020): down(silu(gate(x)) * up(x))."""
  config: Dinov2Config

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    c = x.shape[-1]
    hidden = int(c * cfg.mlp_ratio)
    if cfg.use_swiglu_ffn:
      hidden = (int(hidden * 2 / 3) + 7) // 8 * 8  # two thirds, rounded up to a multiple of 8 (DINOv2's SwiGLUFFN)
      gate = jax.nn.silu(nn.Dense(hidden, name="gate_proj")(x))
      return nn.Dense(c, name="down_proj")(gate * nn.Dense(hidden, name="up_proj")(x))
    return nn.Dense(c, name="fc2")(ACTIVATIONS[cfg.hidden_act](nn.Dense(hidden, name="fc1")(x)))


class Layer(nn.Module):
  """Pre-LayerNorm ViT block with LayerScale (Touvron et al. 2021, CaiT): h + g1 * attn(norm1(h)), then
  h + g2 * mlp(norm2(h))."""
  config: Dinov2Config

  @nn.compact
  def __call__(self, h):
    cfg = self.config
    layer_scale = lambda name: self.param(name, nn.initializers.constant(cfg.layerscale_value), (h.shape[-1],))
    x = nn.LayerNorm(cfg.layer_norm_eps, name="norm1")(h)
    h = h + layer_scale("layer_scale1") * Attention(cfg, name="attention")(x)
    x = nn.LayerNorm(cfg.layer_norm_eps, name="norm2")(h)
    return h + layer_scale("layer_scale2") * Mlp(cfg, name="mlp")(x)


class Dinov2Model(nn.Module):
  """Normalized pixels [B, H, W, C] (see `preprocess`) -> the CLS token of the final layernormed sequence [B, hidden]
  (transformers' `pooler_output`). Patches of patch_size x patch_size (a remainder of H or W is dropped, as torch's
  strided conv), a CLS token, position embeddings resampled to the patch grid, pre-LN blocks, a final LayerNorm."""
  config: Dinov2Config

  @nn.compact
  def __call__(self, pixel_values):
    cfg = self.config
    b, height, width, channels = pixel_values.shape
    if channels != cfg.num_channels:
      raise ValueError(f"DINOv2 takes [B, H, W, {cfg.num_channels}] pixels (NHWC), got shape {pixel_values.shape}")
    p, c = cfg.patch_size, cfg.hidden_size
    x = nn.Conv(c, (p, p), strides=(p, p), padding="VALID", name="patch_embeddings")(pixel_values)
    x = x.reshape(b, -1, c)
    cls = self.param("cls_token", nn.initializers.zeros, (c,))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, c)).astype(x.dtype), x], axis=1)
    positions = nn.Embed((cfg.image_size // p) ** 2 + 1, c, name="position_embeddings").embedding
    x = x + interpolate_pos_encoding(positions, height, width, p, cfg.interpolate_offset)
    for i in range(cfg.num_hidden_layers):
      x = Layer(cfg, name=f"layer_{i}")(x)
    return nn.LayerNorm(cfg.layer_norm_eps, name="layernorm")(x)[:, 0]


def preprocess(images, size=INPUT_SIZE):
  """FD_DINOv2's input path (dgm-eval's DINOv2 encoder; EDM2's calculate_metrics) for images [N, H, W, C] in [-1, 1]:
  grayscale (C = 1) repeated to RGB, bicubic resize to size x size, normalization of the [0, 1] values by the ImageNet
  mean and std -> [N, size, size, 3]."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"DINOv2 takes images [N, H, W, C] with C = 3 (RGB) or 1 (grayscale, repeated to RGB), NHWC; got "
                     f"shape {images.shape}")
  images = jnp.asarray(images, jnp.float32)
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  # jax.image.resize 'bicubic', antialias=True: Keys' a = -0.5 kernel widened by the downscale factor, weights
  # normalized at the borders = torch's F.interpolate(mode='bicubic', antialias=True) (EDM2's resize_mode='torch') and
  # PIL's BICUBIC (dgm-eval), in float: no uint8 rounding or clipping as PIL's; not torch's antialias=False (a = -0.75).
  x = jax.image.resize((images + 1) / 2, (images.shape[0], size, size, 3), "bicubic", antialias=True)
  return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def features(config, params, images):
  """DINOv2 features [N, hidden_size] of images [N, H, W, C] in [-1, 1]: `preprocess`, then the CLS token."""
  return Dinov2Model(config).apply({"params": params}, preprocess(images))


# The facebook/dinov2-* checkpoints (and transformers' save_pretrained) keep DINOv2's original layout; transformers
# renames it on loading (its conversion_mapping for "Dinov2Model"), as does `canonical_state_dict`.
RENAMES = (("attention.attention.query", "attention.q_proj"), ("attention.attention.key", "attention.k_proj"),
           ("attention.attention.value", "attention.v_proj"), ("attention.output.dense", "attention.o_proj"),
           ("mlp.weights_out", "mlp.down_proj"))


def canonical_state_dict(state_dict):
  """A DINOv2 state dict ({key: array}) in transformers' current module names: checkpoint names renamed, the fused
  SwiGLU input projection `mlp.weights_in` split in halves into gate_proj / up_proj, a `dinov2.` prefix
  (Dinov2ForImageClassification) dropped; the CLS token as [C] and the position embeddings as [N + 1, C]."""
  out = {}
  for key, value in state_dict.items():
    key, value = key.removeprefix("dinov2."), np.asarray(value)
    for old, new in RENAMES:
      key = key.replace(old, new)
    if ".mlp.weights_in." in key:
      out[key.replace("weights_in", "gate_proj")], out[key.replace("weights_in", "up_proj")] = np.split(value, 2)
      continue
    if key == "embeddings.cls_token":
      value = value.reshape(-1)
    elif key == "embeddings.position_embeddings":
      value = value.reshape(-1, value.shape[-1])
    out[key] = value
  return out


def hf_key(path):
  """The transformers state-dict key (current names, see canonical_state_dict) of one of this model's parameter paths
  (a tuple of module names)."""
  top, *rest = path
  leaf = lambda name: {"kernel": "weight", "scale": "weight", "bias": "bias"}[name]
  if top == "cls_token":
    return "embeddings.cls_token"
  if top == "position_embeddings":
    return "embeddings.position_embeddings"
  if top == "patch_embeddings":
    return f"embeddings.patch_embeddings.projection.{leaf(rest[0])}"
  if top == "layernorm":
    return f"layernorm.{leaf(rest[0])}"
  prefix = f"encoder.layer.{top.split('_')[1]}"
  if rest[0].startswith("layer_scale"):
    return f"{prefix}.{rest[0]}.lambda1"
  return ".".join([prefix, *rest[:-1], leaf(rest[-1])])


def abstract_params(config):
  """The shapes and dtypes of Dinov2Model(config)'s parameters."""
  size = config.image_size
  shapes = jax.eval_shape(Dinov2Model(config).init, jax.random.PRNGKey(0), jnp.zeros((1, size, size,
                                                                                       config.num_channels)))
  return shapes["params"]


def convert_params(state_dict, config):
  """The flax parameters of Dinov2Model(config) from a transformers Dinov2Model state dict ({key: array}) in the
  checkpoints' layout or transformers' current one; tensors the features do not use (mask_token) are ignored."""
  return from_state_dict(canonical_state_dict(state_dict), abstract_params(config), hf_key, strict=False)


def load_pretrained(directory):
  """(config, params) of a Hugging Face DINOv2 directory: config.json + model.safetensors. Nothing is downloaded."""
  config, path = hf_checkpoint(directory, "DINOv2", _download_hint())
  config = Dinov2Config.from_dict(config)
  return config, convert_params(load_file(path), config)


def load_params(path):
  """(config, params) from a Hugging Face DINOv2 directory (config.json + model.safetensors) or from the Flax
  .msgpack that `convert` writes (params and config; read without torch or safetensors)."""
  if not (path and str(path).endswith(".msgpack")):
    if path and os.path.isfile(path):
      raise ValueError(f"{path} is neither a Hugging Face DINOv2 directory nor a .msgpack of `convert`")
    return load_pretrained(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"DINOv2 checkpoint {path!r} not found: {_download_hint()}")
  with open(path, "rb") as f:
    state = flax.serialization.msgpack_restore(f.read())
  config = Dinov2Config(**{f.name: state["config"][f.name] for f in dataclasses.fields(Dinov2Config)
                           if f.name in state["config"]})
  want = {k: v.shape for k, v in traverse_util.flatten_dict(abstract_params(config)).items()}
  got = {k: v.shape for k, v in traverse_util.flatten_dict(state["params"]).items()}
  if want != got:
    raise ValueError(f"{path}: the parameters do not match its config's network (differing: "
                     f"{sorted('/'.join(k) for k in set(want.items()) ^ set(got.items()))[:5]})")
  return config, state["params"]


def convert(src, dst):
  """Writes a DINOv2 Hugging Face directory (or a .msgpack) as a Flax checkpoint (.msgpack: params and the config),
  which `load_params` reads without torch."""
  config, params = load_params(src)
  with open(dst + ".tmp", "wb") as f:
    f.write(flax.serialization.msgpack_serialize({"config": dataclasses.asdict(config),
                                                  "params": jax.tree.map(np.asarray, params)}))
  os.replace(dst + ".tmp", dst)


if __name__ == "__main__":
  if len(sys.argv) != 3 or not sys.argv[2].endswith(".msgpack"):
    raise SystemExit("usage: python -m diffusion_jax.evaluation.dinov2 HF_DIRECTORY DST.msgpack  (HF_DIRECTORY: "
                     f"config.json + model.safetensors of {MODEL})")
  convert(sys.argv[1], sys.argv[2])
