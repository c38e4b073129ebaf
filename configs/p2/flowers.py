"""P2 on Oxford Flowers 102 at 256x256 (TFDS oxford_flowers102; train + validation + test, 8,189 images, as the
paper trains on all of them; center-cropped). Argument: gamma (`--config=configs/p2/flowers.py:0.5`)."""
from configs.p2.base import get_p2_config


def get_config(gamma="1.0"):
  return get_p2_config("oxford_flowers102", gamma, tfds_split={"train": "train+validation+test", "eval": "validation"})
