"""Ho et al. 2020 CIFAR-10: 35.7M-parameter U-Net (diffusers `ddpm-cifar10-32` layout), T=1000 linear betas,
Adam 2e-4 with 5k warmup, EMA 0.9999, dropout 0.1, batch 128, 800k steps, random horizontal flips omitted."""
from configs.base import get_base_config


def get_config():
  c = get_base_config()
  c.data.name = "tfds"
  c.data.tfds_name = "cifar10"
  c.data.image_size = 32
  c.data.channels = 3
  c.model.block_out_channels = (128, 256, 256, 256)
  c.model.layers_per_block = 2
  c.model.attn_resolutions = (16,)
  c.model.norm_groups = 32
  c.model.dropout = 0.1
  c.diffusion.schedule = "linear"
  c.diffusion.num_timesteps = 1000
  c.training.num_steps = 800_000
  c.training.batch_size = 128
  c.training.ema_decay = 0.9999
  c.training.checkpoint_every = 10_000
  c.training.sample_every = 10_000
  c.optim.lr = 2e-4
  c.optim.warmup_steps = 5000
  c.optim.grad_clip = 1.0
  c.sample.num_samples = 50_000
  c.sample.batch_size = 256
  return c
