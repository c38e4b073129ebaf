"""Latent diffusion (Rombach et al. 2022): with `model.latent = True` the diffusion model works on the scaled latents
z = scale_factor * E(x) of the autoencoder of --mode=train_autoencoder; the training images are encoded once, every
sampler runs unchanged on latents, and samples are decoded to images at the end of the compiled sampling loop."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.data.base import ArrayDataset


def is_latent(config):
  return bool(config.model.get("latent", False))


def diffusion_shape(config):
  """(H, W, C) of the space the diffusion model works in: the images, or the autoencoder's latents."""
  s, c = config.data.image_size, config.data.channels
  if not is_latent(config):
    return (s, s, c)
  f = 2 ** (len(config.autoencoder.model.block_out_channels) - 1)
  return (s // f, s // f, config.autoencoder.model.latent_channels)


def encode_images(autoencoder, params, images, batch_size, sample=False):
  """Latents of `images` [N, H, W, C] (numpy) in batches: posterior means, or samples z ~ q(z | x) (the batch starting
  at image i seeded by i)."""
  @jax.jit
  def encode(x, seed):
    mean, logvar = autoencoder.apply({"params": params}, x, method=autoencoder.encode)
    if not sample:
      return mean
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(jax.random.PRNGKey(seed), mean.shape, mean.dtype)
  return np.concatenate([np.asarray(encode(images[i:i + batch_size], i)) for i in range(0, len(images), batch_size)])


@dataclasses.dataclass(frozen=True)
class Latents:
  """A trained autoencoder (flax module, parameters) and its latent scale factor."""
  autoencoder: object
  params: object
  scale_factor: float

  def encode(self, images, batch_size):
    """Scaled posterior means of `images` [N, H, W, C] (numpy), in batches: the training data are encoded once and
    deterministically (LDM draws a sample of q(z | x) per step instead)."""
    return self.scale_factor * encode_images(self.autoencoder, self.params, images, batch_size)

  def decode(self, params, z):
    """Images of scaled latents z (traceable; params = self.params, passed so that jit sees them as arguments)."""
    return self.autoencoder.apply({"params": params}, z / self.scale_factor, method=self.autoencoder.decode)


def encode_dataset(latents, dataset, batch_size):
  """The dataset with its images replaced by their scaled latents."""
  return ArrayDataset(latents.encode(dataset.images, batch_size), dataset.labels, dataset.num_classes)
