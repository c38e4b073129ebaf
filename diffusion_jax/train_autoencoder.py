"""Training of the KL autoencoder of latent diffusion (`--mode=train_autoencoder`): reconstruction error (L1 or L2,
summed per image) plus kl_weight x KL(q(z | x) || N(0, I)) (Rombach et al. 2022, Sec. 3.1; no discriminator), its
own checkpoints in config.autoencoder.workdir, then the latent scale factor 1 / std(z) measured on training images
(Rombach et al. 2022, App. G) and held-out reconstructions (latent_scale.json, reconstructions.png)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_jax import parallel
from diffusion_jax.latent import encode_images
from diffusion_jax.data import get_dataset
from diffusion_jax.images import save_grid
from diffusion_jax.models.autoencoder import AutoencoderKL, kl_to_standard_normal
from diffusion_jax.train import apply_gradients, fit
from diffusion_jax.build import (autoencoder_dir, create_or_restore, get_autoencoder, init_autoencoder_state,
                                 make_optimizer)

RECONSTRUCTION = {"l1": jnp.abs, "l2": jnp.square}


def autoencoder_loss(ae, params, x, rng, loss_config):
  """(mean over the batch of reconstruction + kl_weight KL, metrics), the reconstruction of one z ~ q(z | x)."""
  if loss_config.reconstruction not in RECONSTRUCTION:
    raise ValueError(f"Unknown autoencoder.loss.reconstruction {loss_config.reconstruction!r}; valid: "
                     f"{', '.join(RECONSTRUCTION)}")
  rec, mean, logvar = ae.apply({"params": params}, x, rng)
  rec_loss = jnp.sum(RECONSTRUCTION[loss_config.reconstruction](rec - x), axis=(1, 2, 3))
  kl = kl_to_standard_normal(mean, logvar)
  return jnp.mean(rec_loss + loss_config.kl_weight * kl), {"reconstruction": jnp.mean(rec_loss), "kl": jnp.mean(kl),
                                                           "mse": jnp.mean(jnp.square(rec - x))}


def make_train_step(config, ae, tx):
  acfg = config.autoencoder

  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: autoencoder_loss(ae, p, batch["image"], rng, acfg.loss), has_aux=True)(state.params)
    return (apply_gradients(state, grads, tx, acfg.training.ema_decay),
            {"loss": loss, **metrics, "grad_norm": optax.tree.norm(grads)})
  return train_step


def latent_std(ae, params, images, batch_size):
  """The standard deviation of latents z ~ q(z | x) over `images`; the latent scale factor is its inverse."""
  z = encode_images(ae, params, images, batch_size, sample=True)
  return float(np.std(z)), z.shape[1:]


def train_autoencoder(config, workdir, mesh=None):
  """Trains the autoencoder to config.autoencoder.training.num_steps, resuming from its own checkpoints; writes
  latent_scale.json (scale factor, latent shape, held-out reconstruction error) and reconstructions.png."""
  mesh = mesh or parallel.mesh_for(config)
  acfg = config.autoencoder
  parallel.check_batch(acfg.training.batch_size, mesh)
  data, held = get_dataset(config, "train"), get_dataset(config, "eval")
  ae, tx = get_autoencoder(config), make_optimizer(acfg.optim)
  if config.data.image_size % ae.downsampling:
    raise ValueError(f"data.image_size {config.data.image_size} is not divisible by the autoencoder's downsampling "
                     f"factor {ae.downsampling} (2 ^ (levels - 1) of autoencoder.model.block_out_channels)")
  out = autoencoder_dir(config, workdir)
  state, mngr = create_or_restore(config, os.path.join(out, "checkpoints"),
                                  lambda rng: init_autoencoder_state(config, ae, tx, rng), mesh,
                                  acfg.training.keep_checkpoints, section="autoencoder.model",
                                  resume_log=os.path.join(out, "resume_log.json"))

  def batch(step, rows):
    return {"image": data.batch(config.seed, step, acfg.training.batch_size, rows)[0]}
  state = fit(config, acfg.training, state, mngr, make_train_step(config, ae, tx), batch, mesh,
              os.path.join(out, "logs"), desc="autoencoder")
  params = state.ema_params
  std, shape = latent_std(ae, params, data.images[:acfg.scale_num_images], acfg.training.batch_size)
  x = held.images[:acfg.training.batch_size]
  rec = np.asarray(jax.jit(lambda z: ae.apply({"params": params}, z, method=AutoencoderKL.decode))(
      encode_images(ae, params, x, len(x))))
  stats = dict(step=int(state.step), scale_factor=1.0 / std, latent_std=std, latent_shape=list(shape),
               num_images=min(len(data), acfg.scale_num_images), held_out_mse=float(np.mean((rec - x) ** 2)))
  if jax.process_index() == 0:
    with open(os.path.join(out, "latent_scale.json"), "w") as f:
      json.dump(stats, f, indent=1)
    pairs = np.stack([x[:50], np.clip(rec[:50], -1, 1)], 1).reshape(-1, *x.shape[1:])  # original, reconstruction
    save_grid(pairs, os.path.join(out, "reconstructions.png"))
  return state, stats


