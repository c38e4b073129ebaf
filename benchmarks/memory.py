"""The memory of a training step, and what gradient checkpointing (model.remat) and gradient accumulation
(training.grad_accum_steps) buy. Two modes:

Measure (default): for the medium U-Net of vs_diffusers (32x32 RGB, blocks 64/128/128, the same random weights on
both sides) at one batch, ours for each remat policy, each k and each kernel set: XLA's memory analysis of the compiled
training step (argument, output and temporary bytes; nothing is run for it), the growth of the process's peak RSS from
before the optimizer state exists to the end of the timed steps, and the step time; on an accelerator also the
device's own peak bytes in use. diffusers' UNet2DModel with and without enable_gradient_checkpointing(): the same
peak RSS growth and step time. Each setting runs in a fresh process, so that memory one setting freed and the
allocator kept does not hide the next one's growth. Then XLA's analysis alone for the DiT sizes (--dit; XL/2 takes
minutes to compile on a CPU) on ImageNet 256's 32x32x4 latents, per remat policy and k. Prints JSON lines and a
Markdown table.

  python -m benchmarks.memory [--remat=none,full,dots] [--accum=1,4] [--kernels=cpu,xla] [--batch=32]
                              [--train_steps=4] [--dit=S/2,B/2,L/2,XL/2]

Budget: `--budget_gb=16 --config=configs/cifar10_edm.py` finds, by bisection over compile-only memory analyses (nothing
is allocated or run), the largest per-device batch whose training step fits the budget under the config's remat and
grad_accum_steps: the question to ask before renting an accelerator.

  python -m benchmarks.memory --budget_gb=16 --config=configs/cifar10_edm.py [--config.model.remat=full]"""
import concurrent.futures
import json
import multiprocessing
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from benchmarks.common import build_unet, peak_rss_reset, rss_mb
from configs import imagenet256_dit
from diffusion_jax import build, latent, tables
from diffusion_jax.models.kernels import KERNELS
from diffusion_jax.models.remat import REMAT_POLICIES, compiler_options
from diffusion_jax.train import make_train_step

FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a script, so that the benchmarks can be imported together)."""
  flags.DEFINE_list("remat", list(REMAT_POLICIES), "model.remat policies to measure.")
  flags.DEFINE_list("accum", ["1", "4"], "training.grad_accum_steps values to measure.")
  flags.DEFINE_list("kernels", ["cpu", "xla"], "Kernel sets to measure (the cpu set only on a CPU).")
  flags.DEFINE_integer("batch", 32, "Global training batch (one device).")
  flags.DEFINE_integer("train_steps", 4, "Timed training steps per setting.")
  flags.DEFINE_list("dit", ["S/2", "B/2", "L/2", "XL/2"], "DiT sizes whose steps XLA's analysis measures.")
  flags.DEFINE_float("budget_gb", 0.0, "> 0: find the largest per-device batch of --config within this.")
  config_flags.DEFINE_config_file("config", None, "The config of --budget_gb.")


def compile_step(config, batch_size, kernels=None):
  """(the training step of `config` compiled for a per-device batch on one device from abstract inputs, nothing
  allocated; its optimizer). The step is compiled under `kernels`, or the config's kernel set, where `auto` stands
  for the accelerators' `xla` (accumulation rolled as a lax.scan) on any backend."""
  config = config.copy_and_resolve_references()
  config.training.batch_size = batch_size
  if kernels or config.model.kernels == "auto":
    config.model.kernels = kernels or "xla"
  model, process = build.setup(config)
  tx = build.model_optimizer(config)
  state = jax.eval_shape(lambda: build.init_state(config, model, tx, jax.random.PRNGKey(0)))
  batch = {"image": jax.ShapeDtypeStruct((batch_size, *latent.diffusion_shape(config)), jnp.float32)}
  if config.model.num_classes:
    batch["label"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
  step = jax.jit(make_train_step(config, model, process, tx), donate_argnums=0,
                 compiler_options=compiler_options(config.model.remat))
  return step.lower(state, batch).compile(), tx


def analysis(compiled):
  """XLA's memory analysis of a compiled step: {argument, output, temp, alias, total} in bytes, total = argument +
  output + temp - alias (the donated state is reused for the new one)."""
  mem = compiled.memory_analysis()
  out = {k: int(getattr(mem, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias")}
  return {**out, "total": out["argument"] + out["output"] + out["temp"] - out["alias"]}


def step_memory(config, batch_size, kernels=None):
  """XLA's memory analysis (analysis) of the training step of `config` at a per-device batch, compiled as
  compile_step compiles it."""
  return analysis(compile_step(config, batch_size, kernels)[0])


def analysis_mb(mem):
  """A memory analysis as the table's xla_*_mb columns."""
  return {f"xla_{n}_mb": round(v / 2**20, 1) for n, v in mem.items()}


def largest_batch(config, budget_bytes, limit=1 << 16):
  """(largest per-device batch b whose step_memory total fits budget_bytes, its analysis), by doubling then bisection;
  b must be a multiple of training.grad_accum_steps. Raises ValueError with batch 1's need when even that does not
  fit."""
  k = config.training.grad_accum_steps
  fits = lambda b: (lambda m: (m["total"] <= budget_bytes, m))(step_memory(config, b))
  ok, mem = fits(k)
  if not ok:
    raise ValueError(f"Even a per-device batch of {k} (training.grad_accum_steps={k}) needs "
                     f"{mem['total'] / 2**30:.2f} GiB, more than the budget of {budget_bytes / 2**30:.2f} GiB")
  lo, lo_mem, hi = k, mem, None
  while hi is None and lo < limit:
    ok, mem = fits(2 * lo)
    lo, lo_mem, hi = (2 * lo, mem, None) if ok else (lo, lo_mem, 2 * lo)
  while hi is not None and hi - lo > k:
    mid = (lo + hi) // (2 * k) * k
    ok, mem = fits(mid)
    lo, lo_mem, hi = (mid, mem, hi) if ok else (lo, lo_mem, mid)
  return lo, lo_mem


def device_peak_mb():
  """The accelerator's own peak bytes in use (None on a CPU, which does not report it)."""
  stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
  return None if not stats else stats.get("peak_bytes_in_use", 0) / 2**20


def inputs(batch_size):
  """The benchmark's fixed images and integer times."""
  rng = np.random.default_rng(0)
  return rng.uniform(-1, 1, (batch_size, 32, 32, 3)).astype(np.float32), rng.integers(0, 1000, batch_size)


def timed(fn, n):
  """Seconds per call of fn() over n calls."""
  start = time.perf_counter()
  for _ in range(n):
    fn()
  return (time.perf_counter() - start) / n


def ours(remat, k, kernels, batch_size, steps):
  """One setting of ours (in its own process): XLA's analysis, then the peak RSS growth from before the optimizer state
  exists over the first and the timed steps, seconds per step, and on an accelerator its peak bytes in use."""
  _, base, params = build_unet("medium")
  config = base.copy_and_resolve_references()
  config.model.remat, config.training.grad_accum_steps, config.model.kernels = remat, k, kernels
  step, tx = compile_step(config, batch_size)
  batch = {"image": jnp.asarray(inputs(batch_size)[0])}
  peak_rss_reset()
  start = rss_mb("VmRSS:")
  holder = [build.new_state(params, tx, jax.random.PRNGKey(0))]

  def run():
    holder[0], metrics = step(holder[0], batch)
    metrics["loss"].block_until_ready()
  run()  # the first step, whose buffers the allocator then holds
  seconds = timed(run, steps)
  peak = device_peak_mb()
  return {"side": "ours", "remat": remat, "grad_accum_steps": k, "kernels": kernels,
          **analysis_mb(analysis(step)), "peak_rss_growth_mb": round(rss_mb("VmHWM:") - start, 1),
          "seconds_per_step": round(seconds, 3), "device_peak_mb": None if peak is None else round(peak, 1)}


def theirs(checkpointing, batch_size, steps):
  """diffusers' UNet2DModel (in its own process) trained as vs_diffusers' torch side (eps loss, Adam), with or without
  gradient checkpointing: peak RSS growth from before the optimizer state exists, and seconds per step."""
  unet, _, _ = build_unet("medium")
  if checkpointing:
    unet.enable_gradient_checkpointing()
  unet.train()
  x, t = inputs(batch_size)
  abar = torch.from_numpy(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))).float()
  xt, tt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(t).long()
  peak_rss_reset()
  start = rss_mb("VmRSS:")
  opt = torch.optim.Adam(unet.parameters(), lr=1e-4)

  def run():
    noise = torch.randn_like(xt)
    a = abar[tt].view(-1, 1, 1, 1)
    loss = torch.mean((unet(a.sqrt() * xt + (1 - a).sqrt() * noise, tt).sample - noise) ** 2)
    opt.zero_grad()
    loss.backward()
    opt.step()
  run()  # the first step creates Adam's moments and the gradients
  seconds = timed(run, steps)
  return {"side": "diffusers", "remat": "gradient checkpointing" if checkpointing else "none", "grad_accum_steps": 1,
          "kernels": "torch", "peak_rss_growth_mb": round(rss_mb("VmHWM:") - start, 1),
          "seconds_per_step": round(seconds, 3)}


def dit_analysis(size, remat, k, batch_size):
  """XLA's analysis alone of the training step of DiT-`size` on ImageNet 256's latents (configs/imagenet256_dit.py)."""
  config = imagenet256_dit.get_config(size)
  config.model.remat, config.training.grad_accum_steps = remat, k
  return {"side": "ours", "model": f"DiT-{size}", "remat": remat, "grad_accum_steps": k, "kernels": "xla",
          **analysis_mb(step_memory(config, batch_size, kernels="xla"))}


def in_fresh_process(fn, *args):
  """fn(*args) run in a new Python process, so that its peak RSS is its own (memory an earlier setting freed and the
  allocator kept would otherwise hide the growth)."""
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
    return pool.submit(fn, *args).result()


COLUMNS = ("model", "side", "remat", "grad_accum_steps", "kernels", "xla_argument_mb", "xla_output_mb", "xla_temp_mb",
           "xla_total_mb", "peak_rss_growth_mb", "device_peak_mb", "seconds_per_step")


def settings():
  """(function, arguments) of every row the flags ask for, in the table's order."""
  b, steps = FLAGS.batch, FLAGS.train_steps
  yield from ((theirs, (checkpointing, b, steps)) for checkpointing in (False, True))
  for kernels in FLAGS.kernels:
    if kernels == "cpu" and jax.default_backend() != "cpu" or kernels not in KERNELS.names():
      continue
    yield from ((ours, (remat, int(k), kernels, b, steps)) for remat in FLAGS.remat for k in FLAGS.accum)
  yield from ((dit_analysis, (size, remat, int(k), b)) for size in FLAGS.dit for remat in FLAGS.remat
              for k in FLAGS.accum)


def measure_all():
  """Runs every setting in a fresh process, printing each row as JSON, then the Markdown table."""
  rows = []
  for fn, args in tqdm(list(settings()), desc="settings"):
    rows.append({"model": "medium U-Net", **in_fresh_process(fn, *args)})
    print(json.dumps({"benchmark": "memory", "batch": FLAGS.batch, **rows[-1]}), flush=True)
  print(f"\nbatch {FLAGS.batch} on one {jax.default_backend()} device; MB = MiB = 2^20 bytes\n")
  print(tables.markdown_table(rows, COLUMNS))


def main(argv):
  del argv
  # the parent starts JAX too (for the backend's name): on a GPU it must not take the memory its children measure
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  if FLAGS.budget_gb > 0:
    if FLAGS.config is None:
      raise app.UsageError("--budget_gb needs --config=CONFIG (the model and its remat / grad_accum_steps)")
    config = FLAGS.config
    batch, mem = largest_batch(config, FLAGS.budget_gb * 2**30)
    print(json.dumps({"benchmark": "memory_budget", "budget_gb": FLAGS.budget_gb, "model": config.model.name,
                      "remat": config.model.get("remat", "none"),
                      "grad_accum_steps": config.training.grad_accum_steps, "per_device_batch": batch,
                      **{f"xla_{k}_gb": round(v / 2**30, 3) for k, v in mem.items()}}))
    return
  start = time.time()
  measure_all()
  print(f"\n{time.time() - start:.0f} s")


if __name__ == "__main__":
  define_flags()
  app.run(main)
