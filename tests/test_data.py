import numpy as np
import pytest

from diffusion_jax.data import get_dataset


def test_digits_split_range_and_determinism(tiny):
  c = tiny()
  train, held = get_dataset(c, "train"), get_dataset(c, "eval")
  assert train.images.shape == (1500, 8, 8, 1) and held.images.shape == (297, 8, 8, 1)
  assert train.images.min() == -1.0 and train.images.max() == 1.0
  assert set(np.unique(train.labels)) == set(range(10))
  again = get_dataset(c, "eval")
  np.testing.assert_array_equal(held.images, again.images)
  a, b = train.batch(0, 5, 32), train.batch(0, 5, 32)
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(train.batch(0, 6, 32)[0], a[0])


def test_batches_cover_each_epoch_once(tiny):
  train = get_dataset(tiny(), "train")
  n = len(train)
  xs = np.concatenate([train.batch(3, i, 100)[1] for i in range(n // 100)])
  assert len(xs) == n and np.bincount(xs).tolist() == np.bincount(train.labels).tolist()


def test_tfds_path_with_mock_data(tiny):
  import tensorflow_datasets as tfds
  c = tiny(**{"data.name": "tfds", "data.tfds_name": "mnist", "data.image_size": 16})
  with tfds.testing.mock_data(num_examples=12):
    ds = get_dataset(c, "train")
  assert ds.images.shape == (12, 16, 16, 1) and ds.num_classes == 10
  assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0


def test_unknown_dataset_and_split(tiny):
  with pytest.raises(ValueError, match="valid datasets: digits, tfds"):
    get_dataset(tiny(**{"data.name": "imagenet"}), "train")
  with pytest.raises(ValueError, match="valid splits"):
    get_dataset(tiny(), "validation")
