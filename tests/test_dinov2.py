"""The Flax DINOv2 encoder against transformers' Dinov2Model (PyTorch, CPU) with the same random weights: CLS features
(pooler_output) to 1e-4 at the trained size and at other patch grids (position embeddings resampled), MLP and SwiGLU
blocks, loaded from a saved directory; the position-embedding resampling and FD_DINOv2's preprocessing against torch's
F.interpolate; the Flax checkpoint round trip; bad inputs named."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # a test-only dependency (requirements-test.txt)

from diffusion_jax.evaluation import dinov2

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=70, patch_size=14)  # a 5x5 grid


def torch_model(use_swiglu_ffn=False):
  from transformers import Dinov2Config, Dinov2Model
  torch.manual_seed(0)
  model = Dinov2Model(Dinov2Config(**TINY, use_swiglu_ffn=use_swiglu_ffn)).eval()
  with torch.no_grad():  # every weight away from its initial value (LayerNorms and LayerScales start at 1 / 0)
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """The torch model (MLP blocks) and its save_pretrained directory (config.json + model.safetensors)."""
  model, directory = torch_model(), tmp_path_factory.mktemp("dinov2")
  model.save_pretrained(directory, safe_serialization=True)
  return model, str(directory)


def pooler_output(model, pixels):
  with torch.no_grad():
    return model(torch.from_numpy(pixels).permute(0, 3, 1, 2)).pooler_output.numpy()


@pytest.mark.parametrize("use_swiglu_ffn", [False, True])
def test_matches_transformers(saved, tmp_path, use_swiglu_ffn):
  if use_swiglu_ffn:  # ViT-g's blocks; the checkpoint stores the SwiGLU input projection fused (mlp.weights_in)
    model, directory = torch_model(True), str(tmp_path)
    model.save_pretrained(directory, safe_serialization=True)
  else:
    model, directory = saved
  config, params = dinov2.load_pretrained(directory)
  assert config.use_swiglu_ffn == use_swiglu_ffn and config.image_size == 70
  # the in-memory state dict has transformers' current names (q_proj, gate_proj ...): the same parameters
  current = dinov2.convert_params({k: v.numpy() for k, v in model.state_dict().items()}, config)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(current), jax.tree.leaves(params)))
  rng, apply = np.random.default_rng(0), jax.jit(dinov2.Dinov2Model(config).apply)
  # the trained 5x5 grid; 3x4 (downsampled, non-square) and 7x7 (upsampled) grids resample the position embeddings
  for size in [(70, 70), (42, 56), (98, 98)]:
    pixels = rng.normal(size=(2, *size, 3)).astype(np.float32)
    ref = pooler_output(model, pixels)
    out = apply({"params": params}, jnp.asarray(pixels))
    assert out.shape == (2, 32)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m,h,w,offset", [(5, 3, 4, 0.0), (5, 7, 7, 0.0), (37, 16, 16, 0.0), (37, 16, 16, 0.1),
                                          (5, 3, 8, 0.1)])
def test_position_embeddings_resampled_as_torch(m, h, w, offset):
  """transformers' resampling by size (offset 0) and facebookresearch/dinov2's by scale factor (offset 0.1): torch's
  bicubic without antialiasing (a = -0.75, borders repeated), not jax.image.resize's (a = -0.5, border weights
  renormalized). 37 -> 16 is ViT-L/14's trained 518 grid at FD_DINOv2's 224 input."""
  pos = np.random.default_rng(m + h).normal(size=(1 + m * m, 8)).astype(np.float32)
  grid = torch.from_numpy(pos[1:]).reshape(1, m, m, 8).permute(0, 3, 1, 2)
  size = dict(scale_factor=((h + offset) / m, (w + offset) / m)) if offset else dict(size=(h, w))
  ref = torch.nn.functional.interpolate(grid, mode="bicubic", align_corners=False, antialias=False, **size)
  ref = ref.permute(0, 2, 3, 1).reshape(h * w, 8).numpy()
  out = np.asarray(dinov2.interpolate_pos_encoding(jnp.asarray(pos), 14 * h, 14 * w, 14, offset))
  np.testing.assert_array_equal(out[0], pos[0])  # the CLS position is kept
  np.testing.assert_allclose(out[1:], ref, rtol=1e-5, atol=1e-5)
  naive = jax.image.resize(pos[1:].reshape(m, m, 8), (h, w, 8), "bicubic").reshape(h * w, 8)
  assert np.abs(naive - ref).max() > 1e-2


def test_preprocess_matches_edm2_resize():
  """EDM2's DINOv2 input (resize_mode='torch'): uint8 images as floats, F.interpolate(bicubic, antialias=True) to 224,
  / 255, ImageNet mean / std. Tolerance: both resample in float32, whose sample coordinates (up to ~300 pixels, ulp
  3e-5) round differently, ~1e-5 in [0, 1] units, ~5e-5 after dividing by the std."""
  rng = np.random.default_rng(1)
  mean, std = (torch.tensor(v).reshape(1, 3, 1, 1) for v in (dinov2.IMAGENET_MEAN, dinov2.IMAGENET_STD))
  for size in [(32, 32), (40, 24), (256, 256)]:  # upsampled, non-square, downsampled (the kernel widened)
    pixels = rng.integers(0, 256, (2, *size, 3), dtype=np.uint8)
    x = torch.nn.functional.interpolate(torch.from_numpy(pixels).permute(0, 3, 1, 2).float(), size=(224, 224),
                                        mode="bicubic", antialias=True)
    ref = ((x / 255 - mean) / std).permute(0, 2, 3, 1).numpy()
    out = dinov2.preprocess(jnp.asarray(pixels / 127.5 - 1.0, jnp.float32))
    assert out.shape == (2, 224, 224, 3)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)
  gray = jnp.asarray(pixels[..., :1] / 127.5 - 1.0, jnp.float32)
  np.testing.assert_array_equal(dinov2.preprocess(gray), dinov2.preprocess(jnp.repeat(gray, 3, -1)))


def test_flax_checkpoint_round_trip(saved, tmp_path):
  model, directory = saved
  config, params = dinov2.load_params(directory)
  dinov2.convert(directory, str(tmp_path / "dinov2.msgpack"))
  config2, params2 = dinov2.load_params(str(tmp_path / "dinov2.msgpack"))
  assert config2 == config
  assert jax.tree.structure(params2) == jax.tree.structure(params)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params)))
  images = np.random.default_rng(2).uniform(-1, 1, (2, 20, 20, 3)).astype(np.float32)
  features = jax.jit(dinov2.features, static_argnums=0)
  out = features(config2, params2, images)  # resized to 224: a 16x16 grid from the tiny model's 5x5
  assert out.shape == (2, 32)
  np.testing.assert_array_equal(out, features(config, params, images))


def test_bad_inputs(saved, tmp_path):
  from transformers import CLIPVisionConfig, Dinov2WithRegistersConfig
  model, directory = saved
  vit = {**CLIPVisionConfig().to_dict(), "architectures": ["CLIPVisionModel"]}
  with pytest.raises(ValueError, match=r"model_type='clip_vision_model', architectures=\['CLIPVisionModel'\].*"
                                       r"facebook/dinov2-small.*facebook/dinov2-large"):
    dinov2.Dinov2Config.from_dict(vit)
  with pytest.raises(ValueError, match=r"register tokens.*num_register_tokens=4.*register-free facebook/dinov2-large"):
    dinov2.Dinov2Config.from_dict(Dinov2WithRegistersConfig(num_register_tokens=4).to_dict())
  with pytest.raises(ValueError, match="register tokens"):
    dinov2.Dinov2Config.from_dict({**model.config.to_dict(), "num_register_tokens": 4})
  (tmp_path / "config.json").write_text(json.dumps(vit))
  (tmp_path / "model.safetensors").write_bytes(open(f"{directory}/model.safetensors", "rb").read())
  with pytest.raises(ValueError, match="clip_vision_model"):
    dinov2.load_pretrained(str(tmp_path))
  for missing in (str(tmp_path / "absent"), "", str(tmp_path / "absent.msgpack")):
    with pytest.raises(FileNotFoundError, match=r"facebook/dinov2-large.*config\.eval\.dinov2_weights"):
      dinov2.load_params(missing)
  (tmp_path / "config.json").write_text(model.config.to_json_string())
  (tmp_path / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match=r"model\.safetensors not found.*facebook/dinov2-large"):
    dinov2.load_pretrained(str(tmp_path))
  with pytest.raises(ValueError, match=r"C = 3 \(RGB\) or 1 \(grayscale.*shape \(2, 16, 16, 2\)"):
    dinov2.preprocess(jnp.zeros((2, 16, 16, 2)))
  config, params = dinov2.load_pretrained(directory)
  with pytest.raises(ValueError, match=r"takes \[B, H, W, 3\] pixels"):
    dinov2.Dinov2Model(config).apply({"params": params}, jnp.zeros((1, 28, 28, 1)))
  with pytest.raises(ValueError, match=r"missing 2 key\(s\) \['encoder.layer.1.mlp.fc2.bias'"):
    dinov2.convert_params({k: v.numpy() for k, v in model.state_dict().items() if "layer.1.mlp.fc2" not in k}, config)
