"""Draws samples from a trained model with the samplers named in `config.sample.runs`, sharded over the mesh;
writes one PNG grid and one .npz of samples per run, with the wall-clock time."""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffusion_jax import parallel
from diffusion_jax.images import save_grid
from diffusion_jax.models import make_model_fn
from diffusion_jax.samplers import get_sampler, parse_runs


def run_label(name, steps, kwargs):
  return "_".join([name, str(steps)] + [f"{k}{v}" for k, v in sorted(kwargs.items())])


def make_generate(config, model, schedule, mesh, name, num_steps, batch_size, **kwargs):
  """A jitted (params, rng, y) -> images function for one sampler run; y may be None for unconditional models."""
  sampler = get_sampler(name)
  shape = (batch_size, config.data.image_size, config.data.image_size, config.data.channels)
  if name == "ddpm":
    kwargs.setdefault("variance", config.sample.ddpm_variance)

  def generate(params, rng, y):
    return sampler(make_model_fn(model, params, schedule), schedule, shape, rng, num_steps=num_steps, y=y,
                   prediction=config.diffusion.prediction, clip_x0=config.sample.clip_x0,
                   spacing=config.sample.spacing, **kwargs)
  return jax.jit(generate, out_shardings=parallel.batch_sharded(mesh))


def sample_labels(config, num):
  """Labels 0, 1, ..., K-1, 0, 1, ... for class-conditional models; None for unconditional ones."""
  k = config.model.get("num_classes", 0)
  return (np.arange(num) % k).astype(np.int32) if k else None


def generate_samples(config, model, schedule, params, mesh, name, num_steps, num, rng, **kwargs):
  """`num` samples in batches of config.sample.batch_size.
  Returns (images [num, H, W, C], labels or None, seconds excluding compilation)."""
  bs = min(config.sample.batch_size, num)
  bs = -(-bs // mesh.devices.size) * mesh.devices.size
  parallel.check_batch(bs, mesh, "sample batch size")
  nb = -(-num // bs)
  labels = sample_labels(config, nb * bs)
  ys = [None if labels is None else parallel.shard_batch(jnp.asarray(labels[b * bs:(b + 1) * bs]), mesh)
        for b in range(nb)]
  gen = make_generate(config, model, schedule, mesh, name, num_steps, bs, **kwargs).lower(params, rng, ys[0]).compile()
  start = time.time()
  out = [np.asarray(gen(params, jax.random.fold_in(rng, b), ys[b])) for b in range(nb)]
  seconds = time.time() - start
  return np.concatenate(out)[:num], None if labels is None else labels[:num], seconds


def sample(config, workdir, params, model, schedule, mesh):
  """Runs every sampler of config.sample.runs; returns a list of run records (also written to samples/runs.json)."""
  outdir = os.path.join(workdir, "samples")
  os.makedirs(outdir, exist_ok=True)
  records = []
  for name, steps, kwargs in parse_runs(config.sample.runs):
    label = run_label(name, steps, kwargs)
    rng = jax.random.PRNGKey(config.seed + 1)
    images, labels, seconds = generate_samples(config, model, schedule, params, mesh, name, steps,
                                               config.sample.num_samples, rng, **kwargs)
    if jax.process_index() == 0:
      np.savez(os.path.join(outdir, f"{label}.npz"), images=images, labels=labels if labels is not None else [])
      save_grid(images[:100], os.path.join(outdir, f"{label}.png"))
    records.append(dict(run=label, sampler=name, steps=steps, nfe=steps, seconds=round(seconds, 2),
                        num_samples=len(images), **kwargs))
    logging.info("sampled %s: %d images in %.1f s", label, len(images), seconds)
  if jax.process_index() == 0:
    with open(os.path.join(outdir, "runs.json"), "w") as f:
      json.dump(records, f, indent=1)
  return records
