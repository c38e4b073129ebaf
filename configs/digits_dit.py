"""DiT (Peebles & Xie 2023) on the demo data: pixel space, 8x8x1 in patches of 2 (16 tokens), 4 adaLN-Zero blocks of
width 96 (0.72M parameters, the demo U-Net's 0.70M), the demo's schedule, target, class conditioning, batch and sampler
runs. 1,700 steps take the demo U-Net's 1,200 steps' training time on the 2-core CPU (the train-step benchmark's
images/s of both; docs/results.md, backbones); Adam at 4e-3 with a
cosine decay to 0 (the U-Net's constant 2e-3 trains this transformer more slowly), and P2 weighting with gamma 0.5
(Choi et al. 2022), which moves the loss's weight from the least noisy levels, where this DiT already beats the U-Net,
to the content levels, where it trails it.

  python -m diffusion_jax.main --config=configs/digits_dit.py --workdir=runs/digits_dit"""
from configs.base import model_defaults
from configs.digits import get_config as get_digits_config


def get_config():
  c = get_digits_config()
  c.model = model_defaults("dit", depth=4, hidden_size=96, num_heads=4, patch_size=2, num_classes=10)
  c.training.num_steps = 1700
  c.optim.lr, c.optim.decay_steps = 4e-3, 1700
  c.training.weighting, c.training.p2_gamma = "p2", 0.5
  return c
