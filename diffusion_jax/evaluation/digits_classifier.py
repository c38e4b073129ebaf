"""A small CNN trained in-project on the digits training split: its penultimate features give FID-digits, its
softmax gives IS-digits and the class accuracy of conditional samples. Trained deterministically,
cached in the workdir."""
import os

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from diffusion_jax.data import get_dataset

CACHE_NAME = "digits_classifier.msgpack"


class DigitsCNN(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(64, (3, 3))(x)).reshape(x.shape[0], -1)
    x = nn.Dropout(0.3, deterministic=not train)(x)
    features = nn.Dense(128)(x)  # pre-activation: no dead (constant) dimensions in the FID covariance
    return nn.Dense(self.num_classes)(nn.relu(features)), features


def _augment(rng, x):
  """Random shifts by up to one pixel (pad with background -1, crop)."""
  b, h, w, _ = x.shape
  pad = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-1.0)
  dx, dy = jax.random.randint(rng, (2, b), 0, 3)
  crop = lambda img, i, j: jax.lax.dynamic_slice(img, (i, j, 0), (h, w, img.shape[-1]))
  return jax.vmap(crop)(pad, dy, dx)


def train_classifier(data_config, steps=600, seed=0, batch_size=128):
  """Returns (params, held-out accuracy)."""
  cfg = type("C", (), {"data": data_config})()
  train, held = get_dataset(cfg, "train"), get_dataset(cfg, "eval")
  model = DigitsCNN(train.num_classes)
  params = model.init(jax.random.PRNGKey(seed), train.images[:1])["params"]
  tx = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, x, y, rng):
    k_aug, k_drop = jax.random.split(rng)
    def loss_fn(p):
      logits, _ = model.apply({"params": p}, _augment(k_aug, x), train=True, rngs={"dropout": k_drop})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  rng = jax.random.PRNGKey(seed + 1)
  for i in range(steps):
    x, y = train.batch(seed, i, batch_size)
    params, opt = step(params, opt, x, y, jax.random.fold_in(rng, i))
  pred = np.argmax(apply(params, held.images)[0], -1)
  return params, float(np.mean(pred == held.labels))


@jax.jit
def _apply(params, x):
  logits, f = DigitsCNN().apply({"params": params}, x)
  return jax.nn.softmax(logits), f


def apply(params, images, batch_size=1000):
  """(softmax probabilities, features) for [N, 8, 8, 1] images in [-1, 1]."""
  out = [_apply(params, jnp.asarray(images[i:i + batch_size], jnp.float32)) for i in range(0, len(images), batch_size)]
  return np.concatenate([np.asarray(o[0]) for o in out]), np.concatenate([np.asarray(o[1]) for o in out])


def load_or_train(data_config, cache_dir, steps=600):
  """The cached classifier in `cache_dir`, or a freshly trained one written there atomically."""
  path = os.path.join(cache_dir, CACHE_NAME)
  if os.path.exists(path):
    with open(path, "rb") as f:
      blob = flax.serialization.msgpack_restore(f.read())
    return blob["params"], float(blob["accuracy"])
  logging.info("Training the digits evaluation classifier (%d steps)", steps)
  params, acc = train_classifier(data_config, steps)
  os.makedirs(cache_dir, exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"  # processes of one job may write it at once
  with open(tmp, "wb") as f:
    f.write(flax.serialization.msgpack_serialize({"params": jax.device_get(params), "accuracy": acc}))
  os.replace(tmp, path)
  return params, acc
