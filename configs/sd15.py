"""Stable Diffusion v1.5 (Rombach et al. 2022): 512x512 images from 64x64x4 latents of the KL autoencoder (f = 8), an
860M-parameter cross-attention U-Net and the frozen CLIP ViT-L/14 text encoder. Weights come from a local diffusers
directory, converted once into the workdir (the tokenizer is read from there):

  python -m diffusion_jax.convert --from=stable_diffusion --src=/path/to/stable-diffusion-v1-5 --dst=runs/sd15
  python -m diffusion_jax.main --mode=sample --config=configs/sd15.py --workdir=runs/sd15 \\
      --config.sample.prompt="a photograph of an astronaut riding a horse"

Meant for an accelerator: a DDIM-50 batch of 4 is about 400 U-Net evaluations of 0.8 TFLOP each."""
from configs.base import get_base_config


def get_config():
  c = get_base_config()
  c.data.image_size, c.data.channels = 512, 3
  c.diffusion.schedule = "scaled_linear"   # sqrt(beta) linear 0.00085 .. 0.012, T = 1000
  c.diffusion.prediction = "eps"
  c.model.update(dict(
      name="unet", latent=True, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
      attn_resolutions=(64, 32, 16), num_heads=8, norm_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0.0,
      num_classes=0, context_dim=768, transformer_depth=1, linear_projection=False, downsample_padding=1))
  c.autoencoder.model.update(dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                                  norm_groups=32))
  c.text.encoder = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                        layer_norm_eps=1e-5, eos_token_id=2)
  c.text.train_encoder = False
  c.training.p_uncond = 0.1                  # Stable Diffusion drops 10% of the prompts in training
  c.text.tokenizer = "runs/sd15/tokenizer"   # where the converter above puts it; set to yours with another --dst
  c.sample.update(dict(runs="ddim:50:w=6.5", spacing="leading_offset", clip_x0=False, num_samples=4, batch_size=4,
                       prompt="a photograph of an astronaut riding a horse"))   # w = guidance scale 7.5 - 1
  return c
