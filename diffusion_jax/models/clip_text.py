"""The CLIP text transformer (Radford et al. 2021; the architecture of transformers' `CLIPTextModel`) in Flax, and its
loading from a Hugging Face directory (config.json + model.safetensors) by name mapping: the frozen text encoder of
Stable Diffusion, or a small one trained here."""
import dataclasses
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from safetensors import safe_open
from safetensors.numpy import load_file

from diffusion_jax.models.state_dict import from_state_dict, hf_checkpoint

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP's approximation (SD v1's text encoder)
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """The fields of transformers' CLIPTextConfig that the network uses (defaults: CLIP ViT-L/14, SD v1.x)."""
  vocab_size: int = 49408
  hidden_size: int = 768
  intermediate_size: int = 3072
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  eos_token_id: int = 49407

  @classmethod
  def from_dict(cls, d):
    """From a CLIPTextConfig's config.json (or a CLIPConfig's, through its `text_config`)."""
    d = d.get("text_config", d)
    if d.get("hidden_act", "quick_gelu") not in ACTIVATIONS:
      raise ValueError(f"Unsupported hidden_act {d['hidden_act']!r}; supported: {', '.join(ACTIVATIONS)}")
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


class EncoderLayer(nn.Module):
  """Pre-LayerNorm transformer layer of CLIP's text and image towers (config: a CLIPTextConfig or a CLIPVisionConfig):
  self-attention, then an MLP, each with a residual connection. `mask` (boolean, broadcast to [B, heads, N, N]: the
  text tower's causal and padding mask) restricts the attention; None attends everywhere (the image tower)."""
  config: CLIPTextConfig

  @nn.compact
  def __call__(self, h, mask=None):
    cfg = self.config
    b, n, c = h.shape
    heads = cfg.num_attention_heads
    x = nn.LayerNorm(cfg.layer_norm_eps, name="layer_norm1")(h)
    q, k, v = (nn.Dense(c, name=f"{p}_proj")(x).reshape(b, n, heads, c // heads) for p in "qkv")
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(c // heads)
    if mask is not None:
      scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    attn = jax.nn.softmax(scores, axis=-1)
    h = h + nn.Dense(c, name="out_proj")(jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, n, c))
    x = nn.LayerNorm(cfg.layer_norm_eps, name="layer_norm2")(h)
    x = nn.Dense(cfg.intermediate_size, name="fc1")(x)
    return h + nn.Dense(c, name="fc2")(ACTIVATIONS[cfg.hidden_act](x))


class CLIPTextModel(nn.Module):
  """Token ids [B, N] (N <= max_position_embeddings) -> (last hidden states [B, N, C], pooled [B, C]: the state at
  the end-of-text token). `attention_mask` [B, N] (1 = token, 0 = padding) is combined with the causal mask."""
  config: CLIPTextConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask=None):
    cfg = self.config
    n = input_ids.shape[-1]
    if n > cfg.max_position_embeddings:
      raise ValueError(f"{n} tokens exceed the text encoder's context of {cfg.max_position_embeddings}; truncate "
                       "the prompt (tokenize with truncation=True)")
    h = (nn.Embed(cfg.vocab_size, cfg.hidden_size, name="token_embedding")(input_ids)
         + nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, name="position_embedding")(jnp.arange(n)))
    mask = jnp.tril(jnp.ones((n, n), bool))[None, None]
    if attention_mask is not None:
      mask = mask & attention_mask.astype(bool)[:, None, None, :]
    for i in range(cfg.num_hidden_layers):
      h = EncoderLayer(cfg, name=f"layers_{i}")(h, mask)
    h = nn.LayerNorm(cfg.layer_norm_eps, name="final_layer_norm")(h)
    # transformers: argmax of the ids for configs with the old eos_token_id 2, else the first end-of-text token
    eos = jnp.argmax(input_ids, -1) if cfg.eos_token_id == 2 else jnp.argmax(input_ids == cfg.eos_token_id, -1)
    return h, h[jnp.arange(h.shape[0]), eos]


def hf_key(path):
  """The transformers state-dict key of one of this model's parameter paths (a tuple of module names)."""
  top, *rest, leaf = path
  leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}[leaf]
  if top in ("token_embedding", "position_embedding"):
    return f"embeddings.{top}.{leaf}"
  if top == "final_layer_norm":
    return f"final_layer_norm.{leaf}"
  layer, name = top.split("_")[1], rest[0]
  group = "self_attn" if name.endswith("_proj") else "mlp" if name.startswith("fc") else None
  return ".".join(["encoder.layers", layer] + ([group] if group else []) + [name, leaf])


def convert_params(state_dict, config):
  """The flax parameters of CLIPTextModel(config) from a transformers state dict ({key: array}, with or without the
  `text_model.` prefix of CLIPTextModel checkpoints; other tensors, such as a projection, are ignored)."""
  abstract = jax.eval_shape(CLIPTextModel(config).init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
  return from_state_dict({k.removeprefix("text_model."): v for k, v in state_dict.items()}, abstract["params"], hf_key,
                         strict=False)


def load_pretrained(directory):
  """(config, params) of a Hugging Face CLIPTextModel directory: config.json + model.safetensors."""
  config, path = hf_checkpoint(directory, "text encoder")
  config = CLIPTextConfig.from_dict(config)
  return config, convert_params(load_file(path), config)


def load_projection(directory):
  """The text projection [hidden_size, projection_dim] of a CLIPModel or CLIPTextModelWithProjection directory (its
  model.safetensors' text_projection.weight, transposed): pooled state @ projection is CLIP's text embedding."""
  path = os.path.join(directory, "model.safetensors")
  with safe_open(path, "np") as f:
    if "text_projection.weight" not in f.keys():
      raise ValueError(f"{path} has no text_projection.weight: CLIP embeddings of prompts need a CLIPModel (or "
                       "CLIPTextModelWithProjection) checkpoint, e.g. openai/clip-vit-large-patch14-336")
    return f.get_tensor("text_projection.weight").T


def tokenize(tokenizer, prompts, max_length):
  """(token ids, attention mask), int32 [B, max_length], of prompts with a transformers tokenizer (CLIPTokenizer from
  a text encoder's directory), padded to max_length; longer prompts are truncated, with a warning."""
  prompts = list(prompts)
  too_long = [p for p, ids in zip(prompts, tokenizer(prompts)["input_ids"]) if len(ids) > max_length]
  if too_long:
    logging.warning("%d prompt(s) exceed the text encoder's context of %d tokens and are truncated: %s",
                    len(too_long), max_length, too_long[:3])
  enc = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="np")
  return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


class TextConditioned(nn.Module):
  """A denoiser conditioned on text (Rombach et al. 2022): y = token ids [B, M] -> the text encoder's last hidden
  states [B, M, C] -> the cross-attention context of `unet`. A frozen encoder (train_encoder=False) gets no gradient."""
  text_encoder: CLIPTextModel
  unet: nn.Module
  train_encoder: bool = True

  def __call__(self, x, timesteps, y=None, train=False):
    if y is None or y.ndim != 2 or not jnp.issubdtype(y.dtype, jnp.integer):
      raise ValueError(f"A text-conditioned model takes y = token ids [B, M] (int), got "
                       f"{None if y is None else (y.shape, y.dtype)}")
    context, _ = self.text_encoder(y)
    return self.unet(x, timesteps, context if self.train_encoder else jax.lax.stop_gradient(context), train=train)
