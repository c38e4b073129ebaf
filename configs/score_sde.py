"""Shared settings of the score-SDE CIFAR-10 configs (Song et al. 2021, App. H; score_sde's
default_cifar10_configs): continuous-time training for 1.3M steps at batch 128, Adam 2e-4 with 5k warmup,
gradient clipping at 1, dropout 0.1, and the DDPM++ network (61.8M parameters) unless a config changes it."""
import ml_collections

from configs.base import get_base_config


def get_score_sde_config(sde):
  c = get_base_config()
  c.data.name = "tfds"
  c.data.tfds_name = "cifar10"
  c.data.image_size = 32
  c.data.channels = 3
  c.diffusion.sde = sde
  c.diffusion.num_timesteps = 1000   # N of the discretisation (ancestral / reverse-diffusion predictors)
  c.model = ml_collections.ConfigDict(dict(
      name="ncsnpp",
      nf=128,
      ch_mult=(1, 2, 2, 2),
      num_res_blocks=4,
      attn_resolutions=(16,),
      dropout=0.1,
      resblock_type="biggan",
      fir=False,
      fir_kernel=(1, 3, 3, 1),
      skip_rescale=True,
      init_scale=0.0,
      embedding_type="positional",
      fourier_scale=16.0,
      progressive="none",
      progressive_input="none",
      progressive_combine="sum",
      num_classes=0,
      kernels="auto",
      remat="none",
      precondition="",
  ))
  c.training.num_steps = 1_300_000
  c.training.batch_size = 128
  c.training.weighting = "uniform"   # "likelihood" for Song et al.'s likelihood weighting (NLL runs)
  c.training.ema_decay = 0.9999
  c.training.checkpoint_every = 50_000
  c.training.sample_every = 50_000
  c.optim.lr = 2e-4
  c.optim.warmup_steps = 5000
  c.optim.grad_clip = 1.0
  c.sample.num_samples = 50_000
  c.sample.batch_size = 256
  c.eval.bpd_num_images = 10_000
  return c
