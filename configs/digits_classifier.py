"""Classifier guidance on the demo data (Dhariwal & Nichol 2021): the noise-conditional classifier of the digits
CFG model (configs/digits_cfg.py), trained on x_t of the same process with --mode=train_classifier in that model's
workdir. Its sampler runs guide the model's unconditional mode (w = -1) with scale s, and combine both guidances."""
from configs.digits_cfg import get_config as get_cfg_config


def get_config():
  c = get_cfg_config()
  c.classifier.model.block_out_channels = (32, 64)
  c.classifier.model.attn_resolutions = (4,)
  c.classifier.training.num_steps = 2000
  c.classifier.training.batch_size = 128
  c.classifier.optim.lr = 1e-3
  c.sample.runs = "ddim:50:w=-1:s=1,ddim:50:w=-1:s=4,ddpm:100:w=-1:s=2,ddim:50:w=1:s=1"
  return c
