"""The memory of a training step, and what gradient checkpointing (model.remat) and gradient accumulation
(training.grad_accum_steps) buy. Two modes:

Measure (default): for the medium U-Net of vs_diffusers (32x32 RGB, blocks 64/128/128, the same random weights on
both sides) at one batch, ours for each remat policy, each k and each kernel set: XLA's memory analysis of the compiled
training step (argument, output and temporary bytes; nothing is run for it), the growth of the process's peak RSS over
the timed steps and the step time; on an accelerator also the device's own peak bytes in use. diffusers' UNet2DModel
in the same process with and without enable_gradient_checkpointing(): peak RSS growth and step time. Prints JSON lines
and a Markdown table.

  python -m benchmarks.memory [--remat=none,full,dots] [--accum=1,4] [--kernels=cpu,xla] [--batch=32] [--train_steps=4]

Budget: `--budget_gb=16 --config=configs/cifar10_edm.py` finds, by bisection over compile-only memory analyses (nothing
is allocated or run), the largest per-device batch whose training step fits the budget under the config's remat and
grad_accum_steps: the question to ask before renting an accelerator.

  python -m benchmarks.memory --budget_gb=16 --config=configs/cifar10_edm.py [--config.model.remat=full]"""
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import app, flags
from ml_collections import config_flags

from benchmarks.common import build_unet, measure, peak_rss_reset, rss_mb
from diffusion_jax import build, latent, tables
from diffusion_jax.models.kernels import KERNELS
from diffusion_jax.models.remat import REMAT_POLICIES
from diffusion_jax.train import make_train_step

FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a script, so that the benchmarks can be imported together)."""
  flags.DEFINE_list("remat", list(REMAT_POLICIES), "model.remat policies to measure.")
  flags.DEFINE_list("accum", ["1", "4"], "training.grad_accum_steps values to measure.")
  flags.DEFINE_list("kernels", ["cpu", "xla"], "Kernel sets to measure (the cpu set only on a CPU).")
  flags.DEFINE_integer("batch", 32, "Global training batch (one device).")
  flags.DEFINE_integer("train_steps", 4, "Timed training steps per setting.")
  flags.DEFINE_float("budget_gb", 0.0, "> 0: find the largest per-device batch of --config within this.")
  config_flags.DEFINE_config_file("config", None, "The config of --budget_gb.")


def step_memory(config, batch_size, kernels=None):
  """XLA's memory analysis of the compiled training step of `config` at a per-device batch (one device, abstract
  inputs: nothing is allocated): {argument, output, temp, alias, total} in bytes, total = argument + output + temp -
  alias (the donated state is reused for the new one)."""
  config = config.copy_and_resolve_references()
  config.training.batch_size = batch_size
  if kernels:
    config.model.kernels = kernels
  model, process = build.setup(config)
  tx = build.model_optimizer(config)
  state = jax.eval_shape(lambda: build.init_state(config, model, tx, jax.random.PRNGKey(0)))
  batch = {"image": jax.ShapeDtypeStruct((batch_size, *latent.diffusion_shape(config)), jnp.float32)}
  if config.model.num_classes:
    batch["label"] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
  mem = jax.jit(make_train_step(config, model, process, tx), donate_argnums=0).lower(state, batch).compile() \
      .memory_analysis()
  out = {k: int(getattr(mem, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias")}
  return {**out, "total": out["argument"] + out["output"] + out["temp"] - out["alias"]}


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


def ours(base, params, x, t, remat, k, kernels, steps):
  """One setting of ours: XLA's analysis, then the timed steps' RSS growth and seconds per step."""
  config = base.copy_and_resolve_references()
  config.model.remat, config.training.grad_accum_steps, config.model.kernels = remat, k, kernels
  config.training.batch_size = len(x)
  mem = step_memory(config, len(x))
  model, process = build.setup(config)
  tx = build.model_optimizer(config)
  holder = [jax.device_put(build.new_state(params, tx, jax.random.PRNGKey(0)))]
  step = jax.jit(make_train_step(config, model, process, tx), donate_argnums=0)
  batch = {"image": jnp.asarray(x)}

  def run():
    holder[0], metrics = step(holder[0], batch)
    metrics["loss"].block_until_ready()
  run()  # compiles
  seconds, rss = measure(run, steps)
  row = {"side": "ours", "remat": remat, "grad_accum_steps": k, "kernels": kernels,
         **{f"xla_{n}_mb": round(v / 2**20, 1) for n, v in mem.items()}, "peak_rss_growth_mb": round(rss, 1),
         "seconds_per_step": round(seconds, 3)}
  peak = device_peak_mb()
  return {**row, "device_peak_mb": None if peak is None else round(peak, 1)}


def diffusers_side(unet, x, t, checkpointing, steps):
  """diffusers' UNet2DModel trained as vs_diffusers' torch side (eps loss, Adam), with or without gradient
  checkpointing: peak RSS growth and seconds per step."""
  if checkpointing:
    unet.enable_gradient_checkpointing()
  else:
    unet.disable_gradient_checkpointing()
  unet.train()
  opt = torch.optim.Adam(unet.parameters(), lr=1e-4)
  abar = torch.from_numpy(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))).float()
  xt, tt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(t).long()

  def run():
    noise = torch.randn_like(xt)
    a = abar[tt].view(-1, 1, 1, 1)
    loss = torch.mean((unet(a.sqrt() * xt + (1 - a).sqrt() * noise, tt).sample - noise) ** 2)
    opt.zero_grad()
    loss.backward()
    opt.step()
  run()  # warm-up
  seconds, rss = measure(run, steps)
  return {"side": "diffusers", "remat": "gradient checkpointing" if checkpointing else "none", "grad_accum_steps": 1,
          "kernels": "torch", "peak_rss_growth_mb": round(rss, 1), "seconds_per_step": round(seconds, 3)}


COLUMNS = ("side", "remat", "grad_accum_steps", "kernels", "xla_argument_mb", "xla_output_mb", "xla_temp_mb",
           "xla_total_mb", "peak_rss_growth_mb", "device_peak_mb", "seconds_per_step")


def measure_all():
  unet, config, params = build_unet("medium")
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (FLAGS.batch, 32, 32, 3)).astype(np.float32)
  t = rng.integers(0, 1000, FLAGS.batch)
  rows = []
  for checkpointing in (False, True):
    rows.append(diffusers_side(unet, x, t, checkpointing, FLAGS.train_steps))
    print(json.dumps({"benchmark": "memory", "model": "medium", "batch": FLAGS.batch, **rows[-1]}), flush=True)
  for kernels in FLAGS.kernels:
    if kernels == "cpu" and jax.default_backend() != "cpu" or kernels not in KERNELS.names():
      continue
    for remat in FLAGS.remat:
      for k in (int(v) for v in FLAGS.accum):
        rows.append(ours(config, params, x, t, remat, k, kernels, FLAGS.train_steps))
        print(json.dumps({"benchmark": "memory", "model": "medium", "batch": FLAGS.batch, **rows[-1]}), flush=True)
  print(f"\nmedium U-Net (vs_diffusers), batch {FLAGS.batch}, {jax.default_backend()}; MB = 2^20 bytes\n")
  print(tables.markdown_table(rows, COLUMNS))


def main(argv):
  del argv
  peak_rss_reset()
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
  print(f"\n{time.time() - start:.0f} s; peak RSS {rss_mb('VmHWM:'):.0f} MB")


if __name__ == "__main__":
  define_flags()
  app.run(main)
