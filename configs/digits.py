"""The demo: a 0.7M-parameter class-conditional U-Net on the embedded 8x8 digits, a few minutes on 2 CPU cores."""
from configs.base import get_base_config


def get_config():
  c = get_base_config()
  c.model.block_out_channels = (32, 64)
  c.model.layers_per_block = 1
  c.model.attn_resolutions = (4,)
  c.model.num_classes = 10
  c.training.num_steps = 1200
  c.training.batch_size = 128
  c.training.ema_decay = 0.999
  c.training.checkpoint_every = 400
  c.training.sample_every = 400
  c.optim.lr = 2e-3
  c.eval.bpd_num_bins = 17
  c.eval.features = "digits"   # FID-digits / IS-digits: no Inception weights needed ("inception" works too)
  c.sample.num_samples = 500   # 50 per class
  c.sample.runs = ("ddpm:1000,ddim:10,ddim:20,ddim:50,ddim:100,dpm_solver++:10,dpm_solver++:20,edm:10,"
                   "ode:20:rtol=0.001:atol=0.001")
  c.optim.warmup_steps = 100
  return c
