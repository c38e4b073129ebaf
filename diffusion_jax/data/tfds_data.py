"""TFDS image datasets (mnist, cifar10, celeb_a, ...), resized and scaled to [-1, 1]; loaded into memory once."""
import numpy as np

from diffusion_jax.data.base import DATASETS, ArrayDataset

TFDS_SPLITS = {"train": "train", "eval": "test"}


@DATASETS.register("tfds")
def load_tfds(data_config, split):
  """Any TFDS image dataset named by `data.tfds_name` (mnist, cifar10, celeb_a, ...)."""
  import tensorflow as tf
  import tensorflow_datasets as tfds
  tf.config.set_visible_devices([], "GPU")
  name = data_config.tfds_name
  ds, info = tfds.load(name, split=data_config.get("tfds_split", {}).get(split, TFDS_SPLITS[split]),
                       with_info=True, data_dir=data_config.get("data_dir") or None)
  label_key = data_config.get("label_key", "label")
  num_classes = info.features[label_key].num_classes if label_key in info.features else 0
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

  images, labels = [], []
  for img, lab in tfds.as_numpy(ds.map(prep).batch(1024)):
    images.append(img)
    labels.append(lab)
  return ArrayDataset(np.concatenate(images).astype(np.float32), np.concatenate(labels), num_classes)


