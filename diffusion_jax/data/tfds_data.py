"""TFDS image datasets (mnist, cifar10, celeb_a, ...), resized and scaled to [-1, 1], read in `data.lanes` even parts
so that each process loads only the part its rows of every global batch come from (data/base.py: LaneDataset)."""
import logging

import numpy as np

from diffusion_jax.data.base import DATASETS, ArrayDataset, LaneDataset, lanes_of

TFDS_SPLITS = {"train": "train", "eval": "test"}


@DATASETS.register("tfds")
def load_tfds(data_config, split, needed=None):
  """Any TFDS image dataset named by `data.tfds_name`; `needed` = (rows, global batch size) loads only their lanes."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  tf.config.set_visible_devices([], "GPU")
  num_lanes = data_config.get("lanes", 1)
  lanes = range(num_lanes) if needed is None else lanes_of(*needed, num_lanes)
  name, split_name = data_config.tfds_name, data_config.get("tfds_split", {}).get(split, TFDS_SPLITS[split])
  data_dir = data_config.get("data_dir") or None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:  # its message lists every data set TFDS knows
    hint = next((" " + line.strip() for line in str(e).splitlines() if line.startswith("Did you mean")), "")
    raise ValueError(f"Unknown TFDS data set data.tfds_name={name!r}.{hint} The names: "
                     "https://www.tensorflow.org/datasets/catalog") from e
  label_key = data_config.get("label_key", "label")
  num_classes = builder.info.features[label_key].num_classes if label_key in builder.info.features else 0
  size = data_config.image_size

  def prep(ex):
    img = tf.image.convert_image_dtype(ex["image"], tf.float32)
    if data_config.get("center_crop", False):
      h, w = tf.shape(img)[0], tf.shape(img)[1]
      s = tf.minimum(h, w)
      img = tf.image.crop_to_bounding_box(img, (h - s) // 2, (w - s) // 2, s, s)
    img = tf.image.resize(img, (size, size), antialias=True)
    label = ex[label_key] if num_classes else tf.zeros((), tf.int64)
    return img * 2.0 - 1.0, tf.cast(label, tf.int32)

  def load(part):
    try:
      ds = builder.as_dataset(split=part)
    except AssertionError as e:  # TFDS's "could not find data in ..."
      raise FileNotFoundError(
          f"TFDS data set {name!r} is not prepared in {data_dir or 'the default TFDS directory'}; nothing is "
          f"downloaded at run time: prepare it once where there is network (tfds build {name} --data_dir=DIR) and "
          "set data.data_dir=DIR") from e
    images, labels = zip(*tfds.as_numpy(ds.map(prep).batch(1024)))
    return ArrayDataset(np.concatenate(images).astype(np.float32), np.concatenate(labels), num_classes)

  parts = tfds.even_splits(split_name, num_lanes)
  data = LaneDataset({j: load(parts[j]) for j in lanes}, num_lanes, num_classes)
  logging.info("%s[%s]: loaded lanes %d-%d of %d, %d images", name, split_name, lanes[0], lanes[-1], num_lanes,
               len(data))
  return data
