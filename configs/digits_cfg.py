"""Classifier-free guidance on the demo data (Ho & Salimans 2022): the digits U-Net trained with label dropout
p_uncond = 0.1, sampled with DDIM-50 at guidance strengths w = 0, 0.5, 1, 2, 4."""
from configs.digits import get_config as get_digits_config


def get_config():
  c = get_digits_config()
  c.training.p_uncond = 0.1
  c.sample.runs = ",".join(f"ddim:50:w={w}" for w in (0, 0.5, 1, 2, 4))
  return c
