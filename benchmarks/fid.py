"""Inception feature extraction speed: images/s of our jitted Flax FID Inception and of the PyTorch reference
(pytorch-fid's architecture, tests/torch_fid_inception.py) on the same machine in the same run, same random weights
and images (resized to 299 inside both); prints one JSON line per implementation.
Usage: python -m benchmarks.fid [--num_images=200 --batch=50 --size=32]"""
import json
import os
import sys
import time

import jax
import numpy as np
import torch
from absl import app, flags

from diffusion_jax.evaluation import features, inception

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from torch_fid_inception import TorchFIDInception

_NUM = flags.DEFINE_integer("num_images", 200, "Images to embed (after one warm-up batch).")
_BATCH = flags.DEFINE_integer("batch", 50, "Images per batch.")
_SIZE = flags.DEFINE_integer("size", 32, "Input resolution (resized to 299 by both).")


def main(_):
  net = TorchFIDInception().eval()
  params = inception.params_from_pytorch({k: v.numpy() for k, v in net.state_dict().items()})
  images = np.random.default_rng(0).uniform(-1, 1, (_NUM.value, _SIZE.value, _SIZE.value, 3)).astype(np.float32)
  extract = features.inception_apply(params, _BATCH.value)
  extract(images[:_BATCH.value])  # compile
  start = time.time()
  extract(images)
  ours = _NUM.value / (time.time() - start)
  x = torch.from_numpy((images + 1) / 2).permute(0, 3, 1, 2)
  with torch.no_grad():
    net(x[:_BATCH.value])
    start = time.time()
    for i in range(0, _NUM.value, _BATCH.value):
      net(x[i:i + _BATCH.value])
  theirs = _NUM.value / (time.time() - start)
  common = dict(benchmark="fid_features", num_images=_NUM.value, batch=_BATCH.value, input_size=_SIZE.value)
  print(json.dumps({**common, "implementation": "diffusion_jax (Flax, jit)", "images_per_sec": round(ours, 1),
                    "devices": jax.device_count(), "backend": jax.default_backend()}))
  print(json.dumps({**common, "implementation": "pytorch-fid architecture (PyTorch)",
                    "images_per_sec": round(theirs, 1), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
  app.run(main)
