"""The CLIP image encoder (Radford et al. 2021; the architecture of transformers' `CLIPVisionModelWithProjection`) in
Flax, CLIP's image preprocessing, and the loading of its weights from a local Hugging Face directory (config.json +
model.safetensors) by name mapping: the embeddings behind CLIPScore and CMMD (evaluation/clip_metrics.py)."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from safetensors import safe_open

from diffusion_jax.models import clip_text
from diffusion_jax.models.clip_text import ACTIVATIONS, EncoderLayer
from diffusion_jax.models.state_dict import from_state_dict, hf_checkpoint

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation of [0, 1] RGB
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MODEL_TYPES = ("clip", "clip_vision_model")  # transformers' model_type of a CLIPConfig and of a CLIPVisionConfig
WEIGHTS_HINT = ("download a CLIP model's config.json and model.safetensors from the Hugging Face Hub, e.g. "
                "openai/clip-vit-large-patch14-336 (ViT-L/14@336px, the encoder of CMMD's reference code), "
                "openai/clip-vit-large-patch14 or openai/clip-vit-base-patch32 (`hf download "
                "openai/clip-vit-large-patch14-336 config.json model.safetensors --local-dir DIR`; a pytorch_model.bin "
                "converts with transformers' from_pretrained + save_pretrained), and point config.eval.clip_weights "
                "at that directory")


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
  """The fields of transformers' CLIPVisionConfig that the network uses (defaults: transformers', ViT-B/32, which
  fill in the fields that a config.json leaves out)."""
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  image_size: int = 224
  patch_size: int = 32
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  projection_dim: int = 512

  @classmethod
  def from_dict(cls, d):
    """From a CLIPVisionConfig's config.json (model_type clip_vision_model) or a full CLIPConfig's (model_type clip:
    its `vision_config`, with the top level's projection_dim, the one its visual_projection has)."""
    model_type = d.get("model_type")
    if model_type is not None and model_type not in MODEL_TYPES:
      raise ValueError(f"The config is of model_type {model_type!r} (architectures {d.get('architectures')}), not a "
                       f"CLIP model: the CLIP image encoder reads model_type {' or '.join(map(repr, MODEL_TYPES))}")
    if model_type == "clip" or "vision_config" in d:
      d = {**(d.get("vision_config") or {}), "projection_dim": d.get("projection_dim", cls.projection_dim)}
    if d.get("hidden_act", cls.hidden_act) not in ACTIVATIONS:
      raise ValueError(f"Unsupported hidden_act {d['hidden_act']!r}; supported: {', '.join(ACTIVATIONS)}")
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


class CLIPVisionModelWithProjection(nn.Module):
  """Preprocessed images [B, image_size, image_size, 3] (NHWC, see `preprocess`) -> image_embeds [B, projection_dim]:
  patch embedding (a conv without bias), class token and position embeddings, pre_layrnorm (transformers' spelling),
  the encoder, post_layernorm of the class token, visual_projection (no bias). Not L2-normalised, as transformers'."""
  config: CLIPVisionConfig

  @nn.compact
  def __call__(self, pixel_values):
    cfg = self.config
    b, h, w, _ = pixel_values.shape
    if (h, w) != (cfg.image_size, cfg.image_size):
      raise ValueError(f"Input image size ({h}*{w}) doesn't match the CLIP image encoder's "
                       f"({cfg.image_size}*{cfg.image_size}); preprocess(images, config.image_size) resizes")
    p, c = cfg.patch_size, cfg.hidden_size
    x = nn.Conv(c, (p, p), strides=(p, p), padding="VALID", use_bias=False, name="patch_embedding")(pixel_values)
    x = x.reshape(b, -1, c)  # row-major over the patch grid, as torch's flatten(2)
    cls = self.param("class_embedding", nn.initializers.normal(1.0), (c,))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, c)), x], axis=1)
    n = (cfg.image_size // p) ** 2 + 1
    x = x + nn.Embed(n, c, name="position_embedding")(jnp.arange(n))
    x = nn.LayerNorm(cfg.layer_norm_eps, name="pre_layrnorm")(x)
    for i in range(cfg.num_hidden_layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(x)  # no mask: every token attends to every token
    pooled = nn.LayerNorm(cfg.layer_norm_eps, name="post_layernorm")(x[:, 0])
    return nn.Dense(cfg.projection_dim, use_bias=False, name="visual_projection")(pooled)


def preprocess(images, image_size=224):
  """CLIP's input [N, image_size, image_size, 3] from float images [N, H, W, C] in [-1, 1] (C = 1 is repeated to 3):
  transformers' CLIPImageProcessor on floats: bicubic resize (antialiased when shrinking, as PIL's) of the short side
  to image_size (the long side to int(image_size * long / short)), clipped to [0, 1] as a uint8 image would be,
  center crop, normalisation by CLIP's mean and std. Pass the config's image_size."""
  x = jnp.asarray(images)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"CLIP takes images [N, H, W, C] with C = 1 or 3 (NHWC, in [-1, 1]); got shape {x.shape}")
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  x = (x.astype(jnp.float32) + 1.0) / 2.0
  n, h, w, _ = x.shape
  size = (image_size, int(image_size * w / h)) if h <= w else (int(image_size * h / w), image_size)
  if size != (h, w):
    x = jnp.clip(jax.image.resize(x, (n, *size, 3), "bicubic", antialias=True), 0.0, 1.0)
  top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
  x = x[:, top:top + image_size, left:left + image_size]
  return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


def hf_key(path):
  """The transformers state-dict key (CLIPVisionModelWithProjection's, = CLIPModel's) of a parameter path."""
  top, leaf = path[0], path[-1]
  if top == "class_embedding":
    return "vision_model.embeddings.class_embedding"
  if top == "visual_projection":
    return "visual_projection.weight"
  if top.startswith("layers_"):
    return "vision_model." + clip_text.hf_key(path)
  leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}[leaf]
  if top in ("patch_embedding", "position_embedding"):
    return f"vision_model.embeddings.{top}.{leaf}"
  return f"vision_model.{top}.{leaf}"  # pre_layrnorm, post_layernorm


def convert_params(state_dict, config):
  """The flax parameters of CLIPVisionModelWithProjection(config) from a transformers state dict ({key: array}) of a
  CLIPVisionModelWithProjection or of a full CLIPModel (vision_model.* and visual_projection.*; the text tower and
  logit_scale are ignored)."""
  abstract = jax.eval_shape(CLIPVisionModelWithProjection(config).init, jax.random.PRNGKey(0),
                            jnp.zeros((1, config.image_size, config.image_size, 3)))
  return from_state_dict({k: v for k, v in state_dict.items() if is_vision_key(k)}, abstract["params"], hf_key)


def is_vision_key(key):
  """A tensor of the image tower (older checkpoints also store the position_ids buffer, not a parameter)."""
  return key.startswith(("vision_model.", "visual_projection.")) and not key.endswith("position_ids")


def load_pretrained(directory):
  """(config, params) of the CLIP image encoder in a local Hugging Face directory (config.json + model.safetensors)
  of a CLIPVisionModelWithProjection or a CLIPModel; reads only the image tower's tensors, downloads nothing."""
  config, path = hf_checkpoint(directory, "CLIP", WEIGHTS_HINT)
  config = CLIPVisionConfig.from_dict(config)
  with safe_open(path, "np") as f:
    state_dict = {k: f.get_tensor(k) for k in f.keys() if is_vision_key(k)}
  return config, convert_params(state_dict, config)
