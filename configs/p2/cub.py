"""P2 on CUB-200-2011 birds at 256x256 (TFDS caltech_birds2011, center-cropped). Argument: gamma
(`--config=configs/p2/cub.py:0.5`)."""
from configs.p2.base import get_p2_config


def get_config(gamma="1.0"):
  return get_p2_config("caltech_birds2011", gamma)
