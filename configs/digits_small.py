"""The guiding model of autoguidance on the demo data (Karras et al. 2024, "Guiding a diffusion model with a bad
version of itself"): the demo U-Net made smaller (widths 16, 32 against 32, 64: 0.18M parameters against 0.70M) and
trained for a quarter of the steps (300 of 1,200), with the same schedule, target and classes as the model it guides
(configs/digits_cfg.py), so that its errors are those of the same model, larger. Train it, then guide with it:

  python -m diffusion_jax.main --config=configs/digits_small.py --workdir=runs/digits_small --mode=train
  python -m diffusion_jax.main --config=configs/digits_cfg.py --workdir=runs/digits_cfg --mode=sample \\
      --config.sample.runs=ddim:50:w=1:guide=runs/digits_small"""
from configs.digits_cfg import get_config as get_cfg_config


def get_config():
  c = get_cfg_config()
  c.model.block_out_channels = (16, 32)
  c.training.num_steps = 300
  c.training.checkpoint_every = 300
  c.training.sample_every = 0
  c.optim.warmup_steps = 25
  c.sample.runs = "ddim:50"
  return c
