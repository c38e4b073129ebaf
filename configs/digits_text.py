"""Text-to-image on the demo data (Rombach et al. 2022, scaled down): the digits autoencoder (8x8 -> 4x4x4 latents),
a 2-layer CLIP text encoder trained jointly with a cross-attention U-Net on captions such as "a handwritten seven",
label (caption) dropout p_uncond = 0.1 for classifier-free guidance, sampled with DDIM-50 at w = 0, 1, 2, 4."""
from configs.digits import get_config as get_digits_config


def get_config():
  c = get_digits_config()
  c.model.latent = True
  c.model.context_dim = c.text.encoder.hidden_size
  c.model.attn_resolutions = (4,)
  c.model.num_heads = 4
  c.autoencoder.training.num_steps = 600
  c.training.num_steps = 1500
  c.training.p_uncond = 0.1
  c.sample.clip_x0 = False     # latents are not in [-1, 1]
  c.sample.runs = ",".join(f"ddim:50:w={w}" for w in (0, 1, 2, 4))
  return c
