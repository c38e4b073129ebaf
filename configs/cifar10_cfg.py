"""Class-conditional CIFAR-10 with classifier-free guidance, with Ho & Salimans' (2022) guidance settings: label
dropout p_uncond = 0.1 and a sweep over w in 0 ... 4 (their ImageNet 64 grid), on the Ho et al. CIFAR-10 U-Net."""
from configs.cifar10_ddpm import get_config as get_cifar10_config


def get_config():
  c = get_cifar10_config()
  c.model.num_classes = 10
  c.training.p_uncond = 0.1
  c.sample.runs = ",".join(f"ddim:100:w={w}" for w in (0, 0.1, 0.3, 1, 2, 4))
  return c
