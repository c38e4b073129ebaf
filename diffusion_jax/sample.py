"""Draws samples from a trained model with the samplers named in `config.sample.runs`, sharded over the mesh;
writes one PNG grid and one .npz of samples per run, with the wall-clock time."""
import inspect
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffusion_jax import parallel
from diffusion_jax.guidance import classifier_free
from diffusion_jax.images import save_grid
from diffusion_jax.models import make_model_fn
from diffusion_jax.samplers import get_sampler, parse_runs
from diffusion_jax.schedules import Schedule
from diffusion_jax.sde import VPSDE, on_sde, sde_from_config


def run_label(name, steps, kwargs):
  return "_".join([name, str(steps)] + [f"{k}{v}" for k, v in sorted(kwargs.items())])


SDE_SAMPLERS = ("pc", "ode")


def nfe_of(name, num_steps, kwargs):
  """Network evaluations of a fixed-step run (the adaptive ODE solver reports its own)."""
  if name == "edm":
    return 2 * num_steps - 1
  if name == "pc":
    return num_steps * (1 + (kwargs.get("n_corrector_steps", 1) if kwargs.get("corrector", "langevin") != "none" else 0))
  if name == "ode":
    return num_steps * {"euler": 1, "heun": 2}[kwargs["solver"]] + 1
  return num_steps


def sampling_sde(config):
  """The SDE of the pc / ode samplers and of the likelihood: the training SDE, or VP for a discrete-schedule model."""
  return sde_from_config(config.diffusion, config.diffusion.sde or "vp")


def sampler_setup(config, model, params, process, name):
  """(model_fn, process the sampler runs on) for sampler `name` and a model trained on `process`.
  Discrete samplers run on the training schedule (a VP SDE's DDPM discretisation); pc / ode on sampling_sde(config)."""
  model_fn = make_model_fn(model, params, process)
  if name in SDE_SAMPLERS:
    sde = sampling_sde(config)
    return (on_sde(model_fn, process, sde) if isinstance(process, Schedule) else model_fn), sde
  if isinstance(process, Schedule):
    return model_fn, process
  if type(process) is VPSDE:
    return model_fn, process.discrete_schedule()
  raise ValueError(f"Sampler {name!r} needs a discrete VP schedule; a model trained on the {config.diffusion.sde!r} "
                   f"SDE samples with: {', '.join(SDE_SAMPLERS)}")


def guidance_scale(config, kwargs):
  """Pops the classifier-free guidance strength `w` of a run's options, checking that the model can be guided."""
  w = kwargs.pop("w", 0.0)
  if w and not config.model.get("num_classes", 0):
    raise ValueError(f"Classifier-free guidance (w={w}) needs a class-conditional model (model.num_classes > 0)")
  if w and not config.training.p_uncond:
    logging.warning("Classifier-free guidance with w=%s on a model trained without label dropout "
                    "(training.p_uncond = 0): it has no trained unconditional mode", w)
  return w


def make_generate(config, model, process, mesh, name, num_steps, batch_size, **kwargs):
  """A jitted (params, rng, y) -> (images, nfe) function for one sampler run; y may be None for unconditional models.
  The run option `w` applies classifier-free guidance (one batched network call for both passes per evaluation)."""
  sampler = get_sampler(name)
  kwargs = dict(kwargs)
  w = guidance_scale(config, kwargs)
  shape = (batch_size, config.data.image_size, config.data.image_size, config.data.channels)
  sampler_setup(config, model, None, process, name)  # fails early if the sampler does not apply
  if name not in SDE_SAMPLERS:
    generic = dict(clip_x0=config.sample.clip_x0, spacing=config.sample.spacing, variance=config.sample.ddpm_variance)
    accepted = inspect.signature(sampler).parameters
    kwargs = {**{k: v for k, v in generic.items() if k in accepted}, **kwargs}
  adaptive = name == "ode" and kwargs.get("solver", "dopri5") == "dopri5"

  def generate(params, rng, y):
    model_fn, on = sampler_setup(config, model, params, process, name)
    model_fn = classifier_free(model_fn, w, config.model.get("num_classes", 0))
    out = sampler(model_fn, on, shape, rng, num_steps=num_steps, y=y,
                  prediction=config.diffusion.prediction, **({"return_nfe": True} if adaptive else {}), **kwargs)
    return out if adaptive else (out, jnp.asarray(nfe_of(name, num_steps, kwargs)))
  return jax.jit(generate, out_shardings=(parallel.batch_sharded(mesh), parallel.replicated(mesh)))


def sample_labels(config, num):
  """Labels 0, 1, ..., K-1, 0, 1, ... for class-conditional models; None for unconditional ones."""
  k = config.model.get("num_classes", 0)
  return (np.arange(num) % k).astype(np.int32) if k else None


def generate_samples(config, model, process, params, mesh, name, num_steps, num, rng, **kwargs):
  """`num` samples in batches of config.sample.batch_size.
  Returns (images [num, H, W, C], labels or None, seconds excluding compilation, mean NFE per batch)."""
  bs = min(config.sample.batch_size, num)
  bs = -(-bs // mesh.devices.size) * mesh.devices.size
  parallel.check_batch(bs, mesh, "sample batch size")
  nb = -(-num // bs)
  labels = sample_labels(config, nb * bs)
  ys = [None if labels is None else parallel.shard_batch(jnp.asarray(labels[b * bs:(b + 1) * bs]), mesh)
        for b in range(nb)]
  gen = make_generate(config, model, process, mesh, name, num_steps, bs, **kwargs).lower(params, rng, ys[0]).compile()
  start = time.time()
  out = [gen(params, jax.random.fold_in(rng, b), ys[b]) for b in range(nb)]
  images = np.concatenate([np.asarray(o[0]) for o in out])[:num]
  seconds = time.time() - start
  return images, None if labels is None else labels[:num], seconds, float(np.mean([o[1] for o in out]))


def sample(config, workdir, params, model, process, mesh):
  """Runs every sampler of config.sample.runs; returns a list of run records (also written to samples/runs.json)."""
  outdir = os.path.join(workdir, "samples")
  os.makedirs(outdir, exist_ok=True)
  records = []
  for name, steps, kwargs in parse_runs(config.sample.runs):
    label = run_label(name, steps, kwargs)
    rng = jax.random.PRNGKey(config.seed + 1)
    images, labels, seconds, nfe = generate_samples(config, model, process, params, mesh, name, steps,
                                               config.sample.num_samples, rng, **kwargs)
    bad = float(np.mean(~np.isfinite(images).all(axis=(1, 2, 3))))
    if bad:
      logging.error("%s: %.1f%% of the samples contain NaN or Inf; they are kept in the .npz and reported in runs.json",
                    label, 100 * bad)
    if jax.process_index() == 0:
      np.savez(os.path.join(outdir, f"{label}.npz"), images=images, labels=labels if labels is not None else [])
      save_grid(images[:100], os.path.join(outdir, f"{label}.png"))
    records.append(dict(run=label, sampler=name, steps=steps, nfe=int(round(nfe)), seconds=round(seconds, 2),
                        num_samples=len(images), nonfinite_fraction=bad, **kwargs))
    logging.info("sampled %s: %d images in %.1f s", label, len(images), seconds)
  if jax.process_index() == 0:
    with open(os.path.join(outdir, "runs.json"), "w") as f:
      json.dump(records, f, indent=1)
  return records
