"""U-ViT (Bao et al. 2023) on the demo data: pixel space, 8x8x1 in patches of 2, time and class as tokens, 5 blocks of
width 104 with long skips between shallow and deep blocks (0.70M parameters, the demo U-Net's); the demo's schedule,
target, conditioning, batch and sampler runs, and the DiT's optimizer (Adam at 4e-3, cosine decay to 0). 1,100 steps
take the demo's training time on the 2-core CPU (docs/results.md, backbones).

  python -m diffusion_jax.main --config=configs/digits_uvit.py --workdir=runs/digits_uvit"""
from configs.base import model_defaults
from configs.digits import get_config as get_digits_config


def get_config():
  c = get_digits_config()
  c.model = model_defaults("uvit", depth=5, hidden_size=104, num_heads=4, patch_size=2, num_classes=10)
  c.training.num_steps = 1100
  c.optim.lr, c.optim.decay_steps = 4e-3, 1100
  return c
