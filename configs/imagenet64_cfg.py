"""Class-conditional ImageNet 64x64 with classifier-free guidance, mirroring Ho & Salimans (2022): label dropout
p_uncond = 0.1, cosine schedule, ancestral sampling with 256 steps over w in 0 ... 4, on a U-Net of Dhariwal &
Nichol's (2021) ImageNet-64 size (width 192, multipliers 1-2-3-4, 3 blocks, attention at 32/16/8, scale-shift norm,
dropout 0.1). The classifier section is guided-diffusion's 64x64 classifier recipe (width 128, depth 4, attention
pooling; AdamW 3e-4, weight decay 0.05, batch 256, 300k steps), for comparing both guidances on one model.
The TFDS loader holds the data in memory as float32 (~63 GB for imagenet_resized/64x64): an accelerator host."""
from configs.base import get_base_config


def get_config():
  c = get_base_config()
  c.data.name = "tfds"
  c.data.tfds_name = "imagenet_resized/64x64"
  c.data.tfds_split = {"train": "train", "eval": "validation"}
  c.data.image_size = 64
  c.data.channels = 3
  c.model.block_out_channels = (192, 384, 576, 768)
  c.model.layers_per_block = 3
  c.model.attn_resolutions = (32, 16, 8)
  c.model.num_heads = 4
  c.model.scale_shift = True
  c.model.norm_groups = 32
  c.model.dropout = 0.1
  c.model.num_classes = 1000
  c.diffusion.schedule = "cosine"
  c.diffusion.num_timesteps = 1000
  c.training.p_uncond = 0.1
  c.training.num_steps = 540_000
  c.training.batch_size = 2048
  c.training.ema_decay = 0.9999
  c.training.checkpoint_every = 10_000
  c.training.sample_every = 10_000
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 0
  c.classifier.model.update(dict(num_classes=1000, block_out_channels=(128, 256, 384, 512), layers_per_block=4,
                                 attn_resolutions=(32, 16, 8), num_heads=4, norm_groups=32))
  c.classifier.training.update(dict(num_steps=300_000, batch_size=256, ema_decay=0.9999, checkpoint_every=10_000,
                                    eval_every=10_000))
  c.classifier.optim.update(dict(optimizer="adamw", lr=3e-4, weight_decay=0.05))
  c.sample.runs = ",".join(f"ddpm:256:w={w}" for w in (0, 0.1, 0.3, 1, 2, 4))
  c.sample.num_samples = 50_000
  c.sample.batch_size = 256
  return c
