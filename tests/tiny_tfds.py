"""A real TFDS dataset of 40 + 12 8x8 images, prepared locally (no download): image i is filled with the value i, so a
batch names the examples it holds. Read back by name from its data_dir, with or without this module imported."""
import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN, NUM_TEST = 40, 12


class TinyImages(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 1)), "label": tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, NUM_TRAIN), "test": self._generate_examples(NUM_TRAIN,
                                                                                            NUM_TRAIN + NUM_TEST)}

  def _generate_examples(self, start, stop):
    for i in range(start, stop):
      yield i, {"image": np.full((8, 8, 1), i, np.uint8), "label": i % 10}


def prepare(data_dir):
  TinyImages(data_dir=str(data_dir)).download_and_prepare()
  return str(data_dir)


def example_ids(images):
  """The example index of each image of a batch in [-1, 1]."""
  return np.round((np.asarray(images)[:, 0, 0, 0] + 1) / 2 * 255).astype(int)
