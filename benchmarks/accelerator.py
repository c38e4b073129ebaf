"""The accelerator benchmark: each model of --models under each kernel set and activation dtype: its training step
at batch 128 and a 50-step DDIM sample of 256 images, as images/s, the FLOP/s achieved (FLOPs from XLA's cost analysis
of the compiled programs; a sample's are NFE x one network evaluation's, since XLA counts a loop's body once) and their
fraction of the device's peak (PEAK_TFLOPS by device kind, or --peak_tflops), with the MB of buffers XLA's memory
analysis reports. The models (MODELS):
  unet     the CIFAR-10 U-Net of Ho et al. 2020 (35.7M parameters, configs/cifar10_ddpm.py), unconditional;
  dit_b2   DiT-B/2 and
  dit_xl2  DiT-XL/2 (Peebles & Xie 2023) on the 32x32x4 latents of ImageNet 256, 1000 classes (a pixel-space config
           of that shape: no autoencoder is involved), learn_sigma=False; trained and sampled with class labels.
The batch is split over every device. Synthetic data (images uniform in [-1, 1], random labels): nothing is
downloaded. Prints one JSON line per measurement and a Markdown table.
Usage: python -m benchmarks.accelerator [--models=unet,dit_b2,dit_xl2] [--kernels=xla,blocked,cpu]
                                        [--dtypes=float32,bfloat16] [--peak_tflops=X]
       python -m benchmarks.accelerator --smoke   (a few steps of the tiny digits U-Net and, for the DiTs, one tiny
                                                   digits DiT: a quick check on a CPU)"""
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks.xla_cost import compiled_cost
from configs.base import get_base_config, model_defaults
from configs.cifar10_ddpm import get_config as cifar10_config
from configs.digits import get_config as digits_config
from diffusion_jax import parallel, tables
from diffusion_jax.build import init_state, make_optimizer, setup
from diffusion_jax.models.kernels import KERNELS, resolve
from diffusion_jax.sample import make_generate, sample_labels
from diffusion_jax.train import make_train_step
from diffusion_jax.models.remat import compiler_options

# the DiTs' named sizes (models/dit.py); under --smoke every DiT is SMOKE_DIT on the digits (8x8x1, 10 classes)
DIT_SIZES = {"dit_b2": "B/2", "dit_xl2": "XL/2"}
MODELS = ("unet", *DIT_SIZES)
SMOKE_DIT = dict(depth=2, hidden_size=32, num_heads=4, patch_size=2, num_classes=10)

_MODELS = flags.DEFINE_list("models", list(MODELS), f"Models to time: {', '.join(MODELS)}.")
_KERNELS = flags.DEFINE_list("kernels", KERNELS.names(), "Kernel sets to time (config.model.kernels).")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Activation dtypes (config.model.dtype).")
_BATCH = flags.DEFINE_integer("batch", 128, "Training batch.")
_SAMPLES = flags.DEFINE_integer("samples", 256, "Images of the timed DDIM sample (one batch).")
_DDIM_STEPS = flags.DEFINE_integer("ddim_steps", 50, "DDIM steps.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 20, "Timed training steps (after 2 untimed ones).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed DDIM samples (after an untimed one).")
_PEAK = flags.DEFINE_float("peak_tflops", None, "The device's peak TFLOP/s, for every dtype (default: PEAK_TFLOPS).")
_SMOKE = flags.DEFINE_bool("smoke", False, "The tiny digits U-Net and one tiny digits DiT for the DiTs, batch 8, "
                           "8 images, 3 DDIM steps, 2 timed steps.")

# Dense peak TFLOP/s per device as (float32, bfloat16), by a substring of jax.devices()[0].device_kind, first match.
# NVIDIA's float32 figure is TF32 on tensor cores, which XLA uses for float32 matrix products by default; TPUs
# multiply float32 in bfloat16 passes at default precision, so both columns give the bfloat16 peak.
PEAK_TFLOPS = (
    ("H100 PCIe", (378.0, 756.0)),
    ("H100", (494.7, 989.4)),
    ("H200", (494.7, 989.4)),
    ("A100", (156.0, 312.0)),
    ("TPU v4", (275.0, 275.0)),
    ("TPU v5 lite", (197.0, 197.0)),
    ("TPU v5p", (459.0, 459.0)),
    ("TPU v6 lite", (918.0, 918.0)),
)


def peak_tflops(device_kind, dtype, override=None):
  """The peak TFLOP/s of one device of this kind for activations of `dtype`; None when unknown (e.g. a CPU)."""
  if override:
    return override
  for kind, peaks in PEAK_TFLOPS:
    if kind in device_kind:
      return peaks[dtype == "bfloat16"]
  return None


def smoke_name(model):
  """The model --smoke times for `model`: the DiTs are all the one tiny DiT."""
  return "dit_tiny" if model in DIT_SIZES else model


def bench_config(model, kernels, dtype, smoke, batch, samples):
  """The config timed for `model` (MODELS, or dit_tiny under smoke) under a kernel set and dtype."""
  if model == "unet":
    c = digits_config() if smoke else cifar10_config()
    if smoke:
      c.model.block_out_channels, c.model.layers_per_block, c.model.norm_groups = (16, 32), 1, 4
    c.model.dropout = 0.0
  elif model == "dit_tiny":
    c = digits_config()
    c.model = model_defaults("dit", **SMOKE_DIT)
  else:
    c = get_base_config()
    c.model = model_defaults("dit", size=DIT_SIZES[model], num_classes=1000)
    c.data.image_size, c.data.channels = 32, 4
  c.model.kernels, c.model.dtype = kernels, dtype
  c.training.batch_size, c.sample.batch_size = batch, samples
  return c


def seconds_per_call(fn, n):
  fn()  # compiled already; one untimed call
  start = time.perf_counter()
  for _ in range(n):
    fn()
  return (time.perf_counter() - start) / n


def measure(config, mesh, train_steps, ddim_steps, repeats):
  """Training and DDIM figures of one config: images/s, FLOPs per call and XLA's buffer MB; a class-conditional
  model trains on random labels and samples the labels 0, 1, ..., K-1, 0, ... (sample.sample_labels)."""
  model, schedule = setup(config)
  tx = make_optimizer(config.optim)
  abstract = jax.eval_shape(lambda r: init_state(config, model, tx, r), jax.random.PRNGKey(0))
  shardings = parallel.state_shardings(abstract, mesh)
  state = jax.jit(lambda r: init_state(config, model, tx, r), out_shardings=shardings)(jax.random.PRNGKey(0))
  step = jax.jit(make_train_step(config, model, schedule, tx), donate_argnums=0,
                 in_shardings=(shardings, parallel.batch_sharded(mesh)),
                 out_shardings=(shardings, parallel.replicated(mesh)),
                 compiler_options=compiler_options(config.model.remat))
  b, shape = config.training.batch_size, (config.data.image_size, config.data.image_size, config.data.channels)
  num_classes = config.model.num_classes
  batch = {"image": np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (b, *shape), minval=-1.0))}
  if num_classes:
    batch["label"] = np.asarray(jax.random.randint(jax.random.PRNGKey(3), (b,), 0, num_classes))
  batch = parallel.shard_batch(batch, mesh)
  train_flops, train_mb = compiled_cost(step, state, batch)
  holder = [state]

  def train_step():
    holder[0], m = step(holder[0], batch)
    m["loss"].block_until_ready()
  train_s = seconds_per_call(train_step, train_steps)

  n = config.sample.batch_size
  params = jax.device_put(holder[0].ema_params, parallel.replicated(mesh))
  forward = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, y))
  labels = sample_labels(num_classes, n)
  x, t, y = parallel.shard_batch((jnp.zeros((n, *shape)), jnp.zeros((n,)), labels), mesh)
  eval_flops, eval_mb = compiled_cost(forward, params, x, t, y)
  rng = jax.random.PRNGKey(2)
  generate = make_generate(config, model, schedule, mesh, "ddim", ddim_steps, n).lower(params, rng, y).compile()
  nfe = float(generate(params, rng, y)[1])
  sample_s = seconds_per_call(lambda: generate(params, rng, y)[0].block_until_ready(), repeats)
  count = sum(np.size(a) for a in jax.tree.leaves(abstract.params))
  return [dict(task="train", params=count, batch=b, seconds=train_s, images_per_s=b / train_s, flops=train_flops,
               xla_mb=train_mb),
          dict(task=f"ddim_{ddim_steps}", params=count, batch=n, seconds=sample_s, images_per_s=n / sample_s,
               flops=nfe * eval_flops, xla_mb=eval_mb)]


def main(_):
  unknown = [m for m in _MODELS.value if m not in MODELS]
  if unknown:
    raise app.UsageError(f"Unknown model(s) {unknown} in --models; valid: {', '.join(MODELS)}")
  smoke = _SMOKE.value
  models = list(dict.fromkeys(smoke_name(m) for m in _MODELS.value)) if smoke else _MODELS.value
  batch, samples = (8, 8) if smoke else (_BATCH.value, _SAMPLES.value)
  ddim_steps, train_steps, repeats = (3, 2, 1) if smoke else (_DDIM_STEPS.value, _TRAIN_STEPS.value, _REPEATS.value)
  mesh = parallel.make_mesh()
  device = jax.devices()[0]
  header = dict(benchmark="accelerator", backend=jax.default_backend(), device_kind=device.device_kind,
                devices=jax.device_count(), models=models, smoke=smoke)
  print(json.dumps(header), flush=True)
  rows = []
  for model in models:
    for dtype in _DTYPES.value:
      for kernels in _KERNELS.value:
        config = bench_config(model, kernels, dtype, smoke, batch, samples)
        peak = peak_tflops(device.device_kind, dtype, _PEAK.value)
        for r in measure(config, mesh, train_steps, ddim_steps, repeats):
          tflops = r["flops"] / r["seconds"] / 1e12
          r = dict(model=model, kernels=kernels, resolved=resolve(kernels), dtype=dtype, **r, tflops_per_s=tflops,
                   fraction_of_peak=tflops / (peak * jax.device_count()) if peak else None)
          print(json.dumps(r), flush=True)
          rows.append(r)
  print(f"\n{', '.join(models)}{' (smoke)' if smoke else ''} on {jax.device_count()} x {device.device_kind} "
        f"({jax.default_backend()})\n")
  print(tables.markdown_table(rows, ["model", "task", "dtype", "kernels", "batch", "images_per_s", "tflops_per_s",
                                     "fraction_of_peak", "xla_mb"]))


if __name__ == "__main__":
  app.run(main)
