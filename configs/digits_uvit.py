"""U-ViT (Bao et al. 2023) on the demo data: pixel space, 8x8x1 in patches of 2, time and class as tokens, long skips
between shallow and deep blocks; the demo's schedule, conditioning and sampler runs.

  python -m diffusion_jax.main --config=configs/digits_uvit.py --workdir=runs/digits_uvit"""
from configs.base import model_defaults
from configs.digits import get_config as get_digits_config


def get_config():
  c = get_digits_config()
  c.model = model_defaults("uvit", depth=5, hidden_size=104, num_heads=4, patch_size=2, num_classes=10)
  return c
