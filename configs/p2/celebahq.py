"""P2 on CelebA-HQ 256 (TFDS celeb_a_hq/256, which needs the manual download TFDS describes). Argument: gamma
(`--config=configs/p2/celebahq.py:0.5`; 0 is the uniform baseline)."""
from configs.p2.base import get_p2_config


def get_config(gamma="1.0"):
  c = get_p2_config("celeb_a_hq/256", gamma, tfds_split={"train": "train", "eval": "train[:10000]"})
  c.data.center_crop = False
  return c
