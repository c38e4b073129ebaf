"""DiT (Peebles & Xie 2023) on the demo data: pixel space, 8x8x1 in patches of 2 (16 tokens), adaLN-Zero blocks, the
demo's class conditioning, schedule and sampler runs; trains in the demo's time on 2 CPU cores.

  python -m diffusion_jax.main --config=configs/digits_dit.py --workdir=runs/digits_dit"""
from configs.base import model_defaults
from configs.digits import get_config as get_digits_config


def get_config():
  c = get_digits_config()
  c.model = model_defaults("dit", depth=4, hidden_size=96, num_heads=4, patch_size=2, num_classes=10)
  return c
