"""P2 weighting's setting (Choi et al. 2022, Sec. 5 and their repository): 256x256 unconditional models with the
linear schedule (T = 1000), the light ADM of the paper (128 channels, multipliers 1,1,2,2,4,4, one residual block
per level, attention at 16x16 with 64-channel heads, scale-shift norm, no dropout), Adam 2e-5, batch 8, EMA 0.9999,
and the weighting 1 / (k + SNR)^gamma with k = 1 and gamma = 1 (or 0.5; 0 is their uniform baseline).
Differences: the paper also learns the variances (hybrid loss, Nichol & Dhariwal), which this codebase does not, and
its down/up-sampling is residual (resblock_updown); sample with ddpm:250 or ddim:50 as the paper does."""
from configs.base import get_base_config


def get_p2_config(tfds_name, gamma="1.0", tfds_split=None):
  c = get_base_config()
  c.data.name = "tfds"
  c.data.tfds_name = tfds_name
  c.data.image_size = 256
  c.data.channels = 3
  c.data.center_crop = True
  if tfds_split:
    c.data.tfds_split = tfds_split
  c.model.block_out_channels = (128, 128, 256, 256, 512, 512)
  c.model.layers_per_block = 1
  c.model.attn_resolutions = (16,)
  c.model.num_heads = 8  # 512 channels at 16x16 in heads of 64
  c.model.norm_groups = 32
  c.model.scale_shift = True
  c.model.dropout = 0.0
  c.diffusion.schedule = "linear"
  c.diffusion.num_timesteps = 1000
  c.training.weighting = "p2" if float(gamma) else "uniform"
  c.training.p2_gamma = float(gamma)
  c.training.p2_k = 1.0
  c.training.batch_size = 8
  c.training.num_steps = 500_000
  c.training.ema_decay = 0.9999
  c.training.checkpoint_every = 10_000
  c.training.sample_every = 10_000
  c.optim.lr = 2e-5
  c.optim.grad_clip = 1.0
  c.sample.runs = "ddpm:250,ddim:50"
  c.sample.num_samples = 50_000
  c.sample.batch_size = 64
  c.eval.features = "inception"
  return c
