"""FID between two sets with the FID Inception network, like pytorch-fid's command:

  python -m diffusion_jax.evaluation.fid PATH_A PATH_B --weights=pt_inception-2015-12-05-6726825d.pth
      [--batch_size=50] [--save_stats=OUT.npz]

Each path is a folder of images (png / jpg), an .npz of images (key `images`, NHWC in [-1, 1], as the samplers write
them) or an .npz of statistics (`mu`, `sigma`, pytorch-fid's format). Features are extracted in jitted batches
sharded over all devices, with a progress bar."""
import functools
import os

import numpy as np
from absl import app, flags

from diffusion_jax.cli_errors import short_errors
from diffusion_jax.evaluation import features, inception, metrics

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_images(path):
  """Images of a folder (sorted by name, RGB) or of an .npz with key `images`, as float32 NHWC in [-1, 1]."""
  if os.path.isdir(path):
    from PIL import Image
    files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
    return features.check_images(np.stack([np.asarray(Image.open(os.path.join(path, f)).convert("RGB"), np.float32)
                                  for f in files]) / 127.5 - 1.0)
  with np.load(path) as f:
    if "images" not in f:
      raise ValueError(f"{path} has no `images` array (it has {sorted(f.files)})")
    return features.check_images(f["images"])


def statistics(path, params_fn, batch_size=50):
  """(mu, sigma) of a statistics .npz, or of the Inception features of a folder / .npz of images; params_fn()
  gives the Inception parameters, loaded only when features are needed."""
  if path.endswith(".npz"):
    with np.load(path) as f:
      if "mu" in f and "sigma" in f:
        return f["mu"][:], f["sigma"][:]
  return metrics.gaussian_stats(features.inception_apply(params_fn(), batch_size)(load_images(path))[0])


def main(argv):
  if len(argv) != 3:
    raise app.UsageError("usage: python -m diffusion_jax.evaluation.fid PATH_A PATH_B --weights=...")
  params_fn = functools.cache(lambda: inception.load_params(flags.FLAGS.weights))
  with short_errors():
    stats = [statistics(p, params_fn, flags.FLAGS.batch_size) for p in argv[1:]]
  if flags.FLAGS.save_stats:
    metrics.save_stats(flags.FLAGS.save_stats, *stats[0])
  print(f"FID: {metrics.frechet_distance(*stats[0], *stats[1]):.6f}")


if __name__ == "__main__":
  flags.DEFINE_string("weights", os.environ.get("FID_INCEPTION_WEIGHTS", ""),
                      f"Path of pytorch-fid's {inception.WEIGHTS_FILE} (or its .npz export).")
  flags.DEFINE_integer("batch_size", 50, "Images per Inception batch.")
  flags.DEFINE_string("save_stats", "", "Also write PATH_A's statistics to this .npz (pytorch-fid format).")
  app.run(main)
