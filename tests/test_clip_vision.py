"""The Flax CLIP image encoder against transformers' CLIPVisionModelWithProjection and CLIPModel (PyTorch, CPU) with
the same random weights, loaded from saved directories; CLIP's preprocessing against PIL and transformers'
CLIPImageProcessor; bad inputs named."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from diffusion_jax.models import clip_vision

TINY = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8, layer_norm_eps=1e-5)
MEAN, STD = np.array(clip_vision.CLIP_MEAN), np.array(clip_vision.CLIP_STD)


def perturbed(model):
  """Every weight away from its initial value (LayerNorms start at 1 / 0)."""
  import torch
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def random_images(shape, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def assert_embeds_match(config, params, torch_embed):
  import torch
  pixels = clip_vision.preprocess(random_images((3, 40, 48, 3)), config.image_size)
  with torch.no_grad():
    ref = torch_embed(torch.from_numpy(np.asarray(pixels).transpose(0, 3, 1, 2).copy())).numpy()
  embeds = clip_vision.CLIPVisionModelWithProjection(config).apply({"params": params}, pixels)
  assert embeds.shape == ref.shape == (3, config.projection_dim)
  np.testing.assert_allclose(embeds, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_matches_transformers_vision_model_with_projection(tmp_path, hidden_act):
  import torch
  from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
  torch.manual_seed(0)
  model = perturbed(CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY, hidden_act=hidden_act, projection_dim=16)))
  model.save_pretrained(tmp_path, safe_serialization=True)  # config.json + model.safetensors, read back by name
  config, params = clip_vision.load_pretrained(str(tmp_path))
  assert config == clip_vision.CLIPVisionConfig(**TINY, hidden_act=hidden_act, projection_dim=16)
  assert_embeds_match(config, params, lambda px: model(pixel_values=px).image_embeds)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  no_projection = {k: v for k, v in state.items() if not k.startswith("visual_projection")}  # a CLIPVisionModel's
  with pytest.raises(ValueError, match=r"missing 1 key\(s\) \['visual_projection.weight'\]"):
    clip_vision.convert_params(no_projection, config)


def test_matches_transformers_clip_model(tmp_path):
  import torch
  from transformers import CLIPConfig, CLIPModel
  torch.manual_seed(1)
  text = dict(vocab_size=99, hidden_size=24, intermediate_size=29, num_hidden_layers=1, num_attention_heads=2,
              max_position_embeddings=16, bos_token_id=0, eos_token_id=2, pad_token_id=1)
  # the vision_config's own projection_dim differs: the full model's visual_projection has the top level's
  model = perturbed(CLIPModel(CLIPConfig(text_config=text, vision_config={**TINY, "projection_dim": 7},
                                         projection_dim=12)))
  model.save_pretrained(tmp_path, safe_serialization=True)
  config, params = clip_vision.load_pretrained(str(tmp_path))
  assert config.projection_dim == 12 and config.hidden_size == 32
  assert_embeds_match(config, params, lambda px: model.get_image_features(pixel_values=px).pooler_output)


def pil_reference(images, size):
  """transformers' CLIPImageProcessor steps on float images with PIL: each channel a float ('F') image, bicubic
  resize of the short side to `size` (long side int(size * long / short)), clip to [0, 1], crop at
  ((h - size) // 2, (w - size) // 2), normalise."""
  out = []
  for img in (np.repeat(images, 3, -1) if images.shape[-1] == 1 else images):
    img = (img + 1) / 2
    h, w, _ = img.shape
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    img = np.stack([np.asarray(Image.fromarray(img[..., c]).resize((nw, nh), Image.BICUBIC)) for c in range(3)], -1)
    top, left = (nh - size) // 2, (nw - size) // 2
    out.append((np.clip(img, 0, 1)[top:top + size, left:left + size] - MEAN) / STD)
  return np.stack(out)


@pytest.mark.parametrize("shape,size", [((2, 40, 50, 3), 32), ((2, 50, 37, 3), 32), ((2, 20, 28, 3), 32),
                                        ((2, 28, 28, 1), 32), ((2, 32, 32, 3), 32)],
                         ids=["shrink_wide", "shrink_tall", "enlarge", "grayscale", "same_size"])
def test_preprocess_matches_pil(shape, size):
  images = random_images(shape, seed=shape[1])
  # PIL's float resampling and jax.image.resize(antialias=True) evaluate the same Keys cubic (a = -0.5) filter,
  # widened by the scale when shrinking and renormalised over in-bounds taps, in different float orders: they
  # differ by float32 rounding, a few 1e-6 of [0, 1], under 1e-5 after the division by CLIP's std (>= 0.26)
  np.testing.assert_allclose(clip_vision.preprocess(images, size), pil_reference(images, size), atol=2e-5)


def test_preprocess_matches_transformers_image_processor():
  from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
  processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
  rng = np.random.default_rng(0)
  # smooth images within [20, 235]: PIL resizes uint8 in two passes, rounding and clipping the first to uint8, which
  # a float resize does not do; here no pass overshoots [0, 255]
  smooth = jax.image.resize(rng.uniform(20, 235, (2, 6, 7, 3)), (2, 45, 60, 3), "linear")
  uint8 = np.round(np.asarray(smooth)).astype(np.uint8)
  ref = processor(images=list(uint8), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
  ours = clip_vision.preprocess(uint8 / 127.5 - 1.0, 32)
  # the two roundings to integers (the first carried through the second pass's weights, of absolute sum ~1.1) put
  # the processor within 1.5 / 255 of the float resize: 1.5 / 255 / 0.2613 (CLIP's smallest std) after normalisation
  np.testing.assert_allclose(ours, ref, atol=1.5 / 255 / 0.2613)


def test_bad_inputs(tmp_path):
  for channels in (2, 4):
    with pytest.raises(ValueError, match=rf"images \[N, H, W, C\] with C = 1 or 3 .*got shape \(1, 8, 8, {channels}\)"):
      clip_vision.preprocess(np.zeros((1, 8, 8, channels)), 32)
  config = clip_vision.CLIPVisionConfig(**TINY)
  with pytest.raises(ValueError, match=r"Input image size \(24\*24\) doesn't match the CLIP image encoder's "
                                       r"\(32\*32\)"):
    clip_vision.CLIPVisionModelWithProjection(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 24, 24, 3)))
  with pytest.raises(ValueError, match=r"model_type 'siglip_vision_model' .*not a CLIP model: the CLIP image encoder "
                                       r"reads model_type 'clip' or 'clip_vision_model'"):
    clip_vision.CLIPVisionConfig.from_dict({"model_type": "siglip_vision_model", "hidden_size": 32})
  with pytest.raises(ValueError, match="Unsupported hidden_act 'relu'"):
    clip_vision.CLIPVisionConfig.from_dict({"model_type": "clip_vision_model", "hidden_act": "relu"})
  for missing in (str(tmp_path / "absent"), None):
    with pytest.raises(FileNotFoundError, match=r"CLIP weights directory .* not found: .*openai/clip-vit-large-patch14"
                                                r".*config\.eval\.clip_weights"):
      clip_vision.load_pretrained(missing)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_vision_model", **TINY}))
  with pytest.raises(FileNotFoundError, match=r"model.safetensors not found: .*config\.eval\.clip_weights"):
    clip_vision.load_pretrained(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip", "architectures": ["SiglipModel"]}))
  (tmp_path / "model.safetensors").write_bytes(b"")
  with pytest.raises(ValueError, match=r"model_type 'siglip' \(architectures \['SiglipModel'\]\), not a CLIP model"):
    clip_vision.load_pretrained(str(tmp_path))
