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
  c = tiny(**{"data.name": "tfds", "data.tfds_name": "mnist", "data.image_size": 16, "data.lanes": 1})
  with tfds.testing.mock_data(num_examples=12):
    ds = get_dataset(c, "train")
  assert ds.images.shape == (12, 16, 16, 1) and ds.num_classes == 10
  assert ds.images.min() >= -1.0 and ds.images.max() <= 1.0


def tfds_config(tiny, data_dir, lanes=4, batch_size=8):
  return tiny(**{"data.name": "tfds", "data.tfds_name": "tiny_images", "data.data_dir": data_dir, "data.lanes": lanes,
                 "training.batch_size": batch_size})


def test_tfds_lanes_load_only_their_rows_and_give_the_same_global_batches(tiny, tiny_tfds_dir):
  from tiny_tfds import NUM_TRAIN, example_ids
  c = tfds_config(tiny, tiny_tfds_dir)
  full = get_dataset(c, "train")
  assert len(full) == NUM_TRAIN and sorted(example_ids(full.images)) == list(range(NUM_TRAIN))
  for num_processes in (2, 4):  # this process's rows of a batch of 8 -> only its lanes of 4, the same rows
    rows = [slice(8 // num_processes * p, 8 // num_processes * (p + 1)) for p in range(num_processes)]
    parts = [get_dataset(c, "train", r) for r in rows]
    assert [len(p) for p in parts] == [NUM_TRAIN // num_processes] * num_processes
    assert sorted(np.concatenate([example_ids(p.images) for p in parts])) == list(range(NUM_TRAIN))
    for step in range(7):
      x, y = full.batch(0, step, 8)
      np.testing.assert_array_equal(x, np.concatenate([p.batch(0, step, 8, r)[0] for p, r in zip(parts, rows)]))
      np.testing.assert_array_equal(y, example_ids(x) % 10)
  epoch = np.concatenate([example_ids(full.batch(0, step, 8)[0]) for step in range(NUM_TRAIN // 8)])
  assert sorted(epoch) == list(range(NUM_TRAIN))  # each example once per epoch
  assert not np.array_equal(epoch, np.concatenate([example_ids(full.batch(0, s, 8)[0]) for s in range(5, 10)]))
  assert not np.array_equal(full.batch(1, 0, 8)[0], full.batch(0, 0, 8)[0])  # the seed matters


def test_tfds_lanes_bad_input(tiny, tiny_tfds_dir):
  with pytest.raises(ValueError, match="data.lanes=3 does not divide the global batch size 8; use a divisor"):
    get_dataset(tfds_config(tiny, tiny_tfds_dir, lanes=3), "train", slice(0, 4))
  half = get_dataset(tfds_config(tiny, tiny_tfds_dir), "train", slice(0, 4))
  with pytest.raises(ValueError, match=r"Rows 4:8 of the batch need lane 2, but this process loaded lanes "
                                       r"\[0, 1\] of 4"):
    half.batch(0, 0, 8, slice(4, 8))


def test_unknown_dataset_and_split(tiny):
  with pytest.raises(ValueError, match="valid datasets: digits, tfds"):
    get_dataset(tiny(**{"data.name": "imagenet"}), "train")
  with pytest.raises(ValueError, match="valid splits"):
    get_dataset(tiny(), "validation")
