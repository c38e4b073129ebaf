"""A whole Stable Diffusion directory (a tiny random one written by diffusers' save_pretrained) converted with
`convert --from=stable_diffusion` and sampled through `main --mode=sample` with a prompt and classifier-free guidance
gives the image of diffusers' StableDiffusionPipeline (DDIM, eta = 0) from the same initial latents."""
import os

import numpy as np
import pytest

CLIP = dict(vocab_size=96, hidden_size=24, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=12, eos_token_id=3, bos_token_id=2, pad_token_id=0)
UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=24, attention_head_dim=2, norm_num_groups=8)
VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
           up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1, latent_channels=4,
           norm_num_groups=8, sample_size=16, scaling_factor=0.5)
SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                 set_alpha_to_one=False, steps_offset=1)  # Stable Diffusion's
PROMPT, STEPS, W = "a handwritten seven", 4, 2.0


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
  """(diffusers pipeline, its directory)."""
  import torch
  from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
  from transformers import CLIPTextConfig, CLIPTextModel
  from diffusion_jax import text
  torch.manual_seed(0)
  parts = dict(unet=UNet2DConditionModel(**UNET), vae=AutoencoderKL(**VAE),
               text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP)))
  with torch.no_grad():  # every weight away from its (often zero) initial value
    for module in parts.values():
      for p in module.parameters():
        p.add_(0.05 * torch.randn_like(p))
  tokenizer = text.train_tokenizer([PROMPT, "the digit 7", "a small picture"], CLIP["vocab_size"])
  tokenizer.model_max_length = CLIP["max_position_embeddings"]
  pipe = StableDiffusionPipeline(**parts, tokenizer=tokenizer, scheduler=DDIMScheduler(**SCHEDULER),
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
  src = str(tmp_path_factory.mktemp("sd") / "tiny-sd")
  pipe.save_pretrained(src, safe_serialization=True)
  return pipe, src


def test_converted_stable_diffusion_samples_like_diffusers(pipeline, tmp_path):
  import jax
  import torch
  from diffusion_jax import convert, main
  from diffusion_jax.config_files import load_config
  from diffusion_jax.samplers.common import initial_noise
  pipe, src = pipeline
  dst = str(tmp_path / "converted")
  config = convert.convert_stable_diffusion(src, dst)
  assert (config.data.image_size, config.model.context_dim, config.diffusion.schedule, config.sample.spacing) == \
      (16, 24, "scaled_linear", "leading_offset")
  assert {"autoencoder", "checkpoints", "config.py", "tokenizer"} <= set(os.listdir(dst))
  config = load_config(os.path.join(dst, "config.py"))
  config.sample.prompt, config.sample.runs = PROMPT, f"ddim:{STEPS}:w={W}"
  config.sample.num_samples = config.sample.batch_size = 2
  main.run(config, dst, "sample")
  ours = np.load(os.path.join(dst, "samples", f"ddim_{STEPS}_w{W}.npz"))["images"]
  assert ours.shape == (2, 16, 16, 3)

  # the same x_T: sample.sample_batches draws batch 0 from fold_in(PRNGKey(seed + 1), 0)
  x_T, _ = initial_noise(jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), 0), (2, 8, 8, 4))
  with torch.no_grad():
    theirs = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=1 + W, eta=0.0, num_images_per_prompt=2,
                  latents=torch.from_numpy(np.asarray(x_T).transpose(0, 3, 1, 2).copy()), output_type="np").images
  np.testing.assert_allclose(ours * 0.5 + 0.5, theirs, atol=1e-4)
  assert np.std(theirs) > 0.01


def test_stable_diffusion_directory_errors_are_named(pipeline, tmp_path):
  import json
  import shutil
  from diffusion_jax import convert
  _, src = pipeline
  with pytest.raises(FileNotFoundError, match="unet/, vae/, text_encoder/"):
    convert.convert_stable_diffusion(str(tmp_path / "nothing"), str(tmp_path / "out"))
  bad = str(tmp_path / "bad")
  shutil.copytree(src, bad)
  cfg = json.load(open(os.path.join(bad, "vae", "config.json")))
  json.dump({**cfg, "down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]},
            open(os.path.join(bad, "vae", "config.json"), "w"))
  with pytest.raises(ValueError, match=r"AutoencoderKL down block type\(s\) \['AttnDownEncoderBlock2D'\]"):
    convert.convert_stable_diffusion(bad, str(tmp_path / "out"))


def test_sd15_config_is_what_the_converter_reads_from_stable_diffusion_v1_5():
  """configs/sd15.py equals the converter's reading of SD v1.5's published unet / vae / scheduler config.json."""
  from configs.sd15 import get_config
  from diffusion_jax import convert
  unet = dict(act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], center_input_sample=False,
              cross_attention_dim=768, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
              downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
              mid_block_scale_factor=1, norm_eps=1e-05, norm_num_groups=32, out_channels=4, sample_size=64,
              up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
  vae = dict(act_fn="silu", block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
             in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3, sample_size=512,
             up_block_types=["UpDecoderBlock2D"] * 4)
  scheduler = dict(_class_name="PNDMScheduler", beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085,
                   num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
                   clip_sample=False)
  read = {**convert.unet_overrides(unet), **convert.vae_overrides(vae), **convert.scheduler_overrides(scheduler)}
  read.update({"data.image_size": 64 * 8, "data.channels": 3})
  c = get_config()
  for key, value in read.items():
    node = c
    for part in key.split("."):
      node = node[part]
    assert node == value, key
