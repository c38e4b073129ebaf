"""diffusion_jax against diffusers / PyTorch on the same network (the same UNet2DModel or DiTTransformer2DModel
weights, converted), batch and float32, in one process: training images/s, milliseconds per network evaluation, 50-step
DDIM samples of a few sizes (64 images down to single images, where per-step framework overhead dominates), the
largest difference of the two networks' outputs on the timed evaluation (relative to its largest entry), memory (the
growth of the process's peak RSS during the timed calls, coarse on a CPU; and for ours the buffers XLA's memory
analysis reports), and the FLOP/s the compiled XLA programs achieve against this machine's measured matmul peak. JAX
sees one CPU device per core: training (TRAIN_DEVICES), evaluation and sampling split the batch over them. The two
sides are timed in interleaved rounds and each figure is a median over the rounds; `*_speedup_rounds` are each round's
own ratios (their range is in the table) and `*_spread` is the (max - min) / median of a measurement. Prints JSON lines
and a Markdown table. Needs the test requirements (torch, diffusers).

Models (--models), each of a kind (KINDS):
  unet: against diffusers' UNet2DModel, unconditional: `medium` (32x32 RGB, the issue's) and `digits` (8x8x1, the
        demo's);
  dit:  against diffusers' DiTTransformer2DModel, class-conditional (random labels in [0, K) for training and the
        timed evaluation, labels 0, 1, ..., K-1, 0, ... for the samples): `dit_digits` (configs/digits_dit.py: 8x8x1,
        patch 2, depth 4, hidden 96 = 4 heads x 24, 10 classes) and `dit_s2` (DiT-S/2 on the 32x32x4 latents of
        ImageNet 256: depth 12, hidden 384 = 6 heads x 64, 1000 classes; not in the default list, as its 64-image DDIM
        loops are long on a CPU: ask for it, e.g. with --samples=1,8). The DiTs have learn_sigma=False, so that both
        sides train the eps-MSE loss on every output channel. A DiTTransformer2DModel holds a copy of DiT's timestep
        and class embedder in each block (and runs each); the random one here has block 0's copied into the others,
        as DiT's checkpoints do, so that it converts: `params` counts ours, `diffusers_params` theirs.
Usage: python -m benchmarks.vs_diffusers [--models=medium,digits,dit_digits] [--samples=1,8,64] [--rounds=3]
       [--train_steps=4]"""
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import app, flags
from diffusers import DDIMScheduler, DiTTransformer2DModel
from diffusers.training_utils import EMAModel

from benchmarks.common import UNETS, apply_overrides, build_unet, measure, numpy_state_dict
from benchmarks.xla_cost import compiled_cost
from configs.base import get_base_config, model_defaults
from diffusion_jax import convert, parallel, tables
from diffusion_jax.models.state_dict import from_state_dict
from diffusion_jax.sample import make_generate
from diffusion_jax.train import make_train_step
from diffusion_jax.build import make_optimizer, new_state, setup
from diffusion_jax.xla_flags import cpu_cores, set_cpu_flags

# the digits DiT (configs/digits_dit.py) and DiT-S/2 at the latent size of ImageNet 256 (Peebles & Xie 2023, Table 1),
# both without learn_sigma; diffusers' defaults otherwise (norm_eps 1e-5 of the MLP's norm, gelu-approximate)
DITS = {
    "dit_digits": dict(sample_size=8, in_channels=1, out_channels=1, patch_size=2, num_layers=4, num_attention_heads=4,
                       attention_head_dim=24, num_embeds_ada_norm=10),
    "dit_s2": dict(sample_size=32, in_channels=4, out_channels=4, patch_size=2, num_layers=12, num_attention_heads=6,
                   attention_head_dim=64, num_embeds_ada_norm=1000),
}
KINDS = {**{name: "unet" for name in UNETS}, **{name: "dit" for name in DITS}}
DEFAULT_MODELS = ["medium", "digits", "dit_digits"]
# the JAX devices each model's training step splits its batch over (0: all, one per core). The digits U-Net's step is
# too short for the CPU all-reduce, which takes a rendezvous for each of its 212 gradients: 52 ms a step on one
# device, 67 ms on two (batch 32). The digits DiT's step is short too: one device, like the digits U-Net's.
TRAIN_DEVICES = {"medium": 0, "digits": 1, "dit_digits": 1, "dit_s2": 0}

_MODELS = flags.DEFINE_list("models", DEFAULT_MODELS, f"Models to compare: {', '.join(KINDS)}.")
_BATCH = flags.DEFINE_integer("batch", 32, "Training batch and network-evaluation batch.")
_SAMPLES = flags.DEFINE_list("samples", ["1", "8", "64"], "Images of each timed 50-step DDIM sample (one batch).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 4, "Timed training steps per framework and round.")
_EVALS = flags.DEFINE_integer("evals", 4, "Timed network evaluations per framework and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds; each figure is the median over the rounds.")
_TRAIN_DEVICES = flags.DEFINE_integer("train_devices", None, "JAX devices the training step splits its batch over "
                                      "(default: TRAIN_DEVICES of the model; 0: all).")


def matmul_peak_flops(n=2048, reps=10):
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(reps):
    out = f(a)
  out.block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - start)


def ddim_labels(num_classes, n):
  """The class labels of an n-image sample, 0, 1, ..., K-1, 0, ... (as sample.sample_labels); None without classes."""
  return np.arange(n, dtype=np.int32) % num_classes if num_classes else None


def build_dit(name):
  """A random diffusers DiTTransformer2DModel of DITS[name] whose blocks share block 0's timestep and class embedder
  (as DiT's), the config of ours (convert.dit_overrides) and its parameters converted from it (convert.dit_key)."""
  torch.manual_seed(0)
  dit = DiTTransformer2DModel(**DITS[name])
  with torch.no_grad():
    for block in dit.transformer_blocks[1:]:
      block.norm1.emb.load_state_dict(dit.transformer_blocks[0].norm1.emb.state_dict())
  config = get_base_config()
  config.model = model_defaults("dit")
  apply_overrides(config, convert.dit_overrides(dict(dit.config, _class_name=type(dit).__name__)))
  state_dict = convert.dit_state_dict(numpy_state_dict(dit), config.model.num_classes)
  return dit, config, from_state_dict(state_dict, convert.abstract_params(config), convert.dit_key)


BUILDERS = {"unet": build_unet, "dit": build_dit}


def torch_side(net, x, t, y, num_classes, samples):
  """diffusers / PyTorch: a training step as diffusers' train_unconditional example takes it, and as ours does (eps
  loss on x_t of the linear DDPM schedule, gradient norm clipped to 1, Adam, EMAModel of the weights with decay
  0.9999), a network evaluation, 50-step DDIMScheduler loops of each size in samples; class labels y (None: an
  unconditional network) in training and evaluation, ddim_labels of num_classes in the loops. Also returns the
  evaluation's output from the initial weights (those ours were converted from)."""
  opt = torch.optim.Adam(net.parameters(), lr=1e-4)
  ema = EMAModel(net.parameters(), decay=0.9999, foreach=True)
  abar = torch.from_numpy(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))).float()
  xt, tt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(t).long()
  yt = None if y is None else torch.from_numpy(y).long()

  def train_step():
    net.train()
    noise = torch.randn_like(xt)
    a = abar[tt].view(-1, 1, 1, 1)
    loss = torch.mean((net(a.sqrt() * xt + (1 - a).sqrt() * noise, tt, class_labels=yt).sample - noise) ** 2)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    ema.step(net.parameters())

  def forward():
    net.eval()
    with torch.no_grad():
      return net(xt, tt, class_labels=yt).sample

  def evaluate():
    forward()

  scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)

  def ddim(n):
    net.eval()
    scheduler.set_timesteps(50)
    z = torch.randn((n,) + xt.shape[1:])
    labels = ddim_labels(num_classes, n)
    labels = None if labels is None else torch.from_numpy(labels).long()
    with torch.no_grad():
      for step in scheduler.timesteps:  # a timestep per image: DiTTransformer2DModel embeds a 1-D tensor only
        z = scheduler.step(net(z, step.expand(n), class_labels=labels).sample, step, z).prev_sample

  out = forward().numpy().transpose(0, 2, 3, 1)  # before any training step changes the weights
  train_step()  # warm-up: allocations, kernel selection
  return dict(train=train_step, eval=evaluate, **{f"ddim_{n}": lambda n=n: ddim(n) for n in samples}), dict(out=out)


def jax_side(config, params, x, t, y, samples, train_devices):
  """diffusion_jax: the jitted train step of train.py, a jitted network evaluation and the compiled DDIM-50 loop of
  sample.py (compiled once per size in samples, as sample_batches does per run), with the batch split over the CPU's
  JAX devices (one per core; training over the devices `train_devices`); class labels y (None: an unconditional
  network) in training and evaluation, ddim_labels in the loops."""
  model, schedule = setup(config)
  tx = make_optimizer(config.optim)
  mesh = parallel.mesh_for(config)
  train_mesh = parallel.make_mesh(devices=train_devices)
  state = new_state(params, tx, jax.random.PRNGKey(0))
  shardings = parallel.state_shardings(state, train_mesh)
  step = jax.jit(make_train_step(config, model, schedule, tx), donate_argnums=0,
                 in_shardings=(shardings, parallel.batch_sharded(train_mesh)),
                 out_shardings=(shardings, parallel.replicated(train_mesh)))  # as train.fit
  state = jax.device_put(state, shardings)
  batch = parallel.shard_batch({"image": x} if y is None else {"image": x, "label": y}, train_mesh)
  train_flops, train_xla_mb = compiled_cost(step, state, batch)
  holder = [state]

  def train_step():
    holder[0], m = step(holder[0], batch)
    m["loss"].block_until_ready()

  forward = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, y))
  params = jax.device_put(params, parallel.replicated(mesh))
  x, t, y = parallel.shard_batch((x, t, y), mesh)
  eval_flops, eval_xla_mb = compiled_cost(forward, params, x, t, y)

  def evaluate():
    forward(params, x, t, y).block_until_ready()

  def ddim(n):  # split over as many devices as divide n
    rng = jax.random.PRNGKey(1)
    sub_mesh = parallel.make_mesh(devices=jax.devices()[:math.gcd(n, len(jax.devices()))])
    placed = jax.device_put(params, parallel.replicated(sub_mesh))
    labels = ddim_labels(config.model.num_classes, n)
    labels = None if labels is None else parallel.shard_batch(labels, sub_mesh)
    gen = make_generate(config, model, schedule, sub_mesh, "ddim", 50, n).lower(placed, rng, labels).compile()

    def run():
      gen(placed, rng, labels)[0].block_until_ready()
    return run

  train_step()  # compiles
  return dict(train=train_step, eval=evaluate, **{f"ddim_{n}": ddim(n) for n in samples}), dict(
      train_flops=train_flops, eval_flops=eval_flops, train_xla_mb=train_xla_mb, eval_xla_mb=eval_xla_mb,
      out=np.asarray(forward(params, x, t, y)))


def timed_rounds(sides, batch, samples):
  """Interleaved rounds (diffusers then ours, for each measurement): the median of each measurement over the rounds,
  so that the load of this shared machine drifting over minutes does not favour either side; and each round's own
  speedup (diffusers' time / ours, measured seconds apart), whose range shows what the noise allows to conclude."""
  keys = [("train", _TRAIN_STEPS.value), ("eval", _EVALS.value)] + [(f"ddim_{n}", 1) for n in samples]
  times = {side: {k: [] for k, _ in keys} for side in sides}
  peaks = {side: {} for side in sides}
  for r in range(_ROUNDS.value):
    for key, n in keys:
      for side, (fns, _) in sides.items():
        seconds, mb = measure(fns[key], n)
        times[side][key].append(seconds)
        peaks[side].setdefault(key, mb)  # the first round's growth; later rounds reuse memory
  out = {}
  for side, t in times.items():
    med = {k: float(np.median(v)) for k, v in t.items()}
    out[side] = dict(train_images_per_s=batch / med["train"], ms_per_eval=1000 * med["eval"],
                     **{f"{k}_seconds": v for k, v in med.items() if k.startswith("ddim")},
                     train_peak_mb=peaks[side]["train"], ddim_peak_mb=peaks[side][f"ddim_{max(samples)}"],
                     train_spread=float(np.ptp(t["train"]) / med["train"]),
                     eval_spread=float(np.ptp(t["eval"]) / med["eval"]))
  theirs, ours = times.values()
  rounds = {k: [a / b for a, b in zip(theirs[k], ours[k])] for k, _ in keys}
  return out, rounds


def compare(name, peak, samples):
  kind = KINDS[name]
  net, config, params = BUILDERS[kind](name)
  config.training.batch_size = _BATCH.value
  size, ch, num_classes = config.data.image_size, config.data.channels, config.model.num_classes
  n_params = sum(np.size(p) for p in jax.tree.leaves(params))
  diffusers_params = sum(p.numel() for p in net.parameters())  # a DiT's per-block embedder copies counted each
  assert kind != "unet" or n_params == diffusers_params
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (_BATCH.value, size, size, ch)).astype(np.float32)
  t = rng.integers(0, 1000, _BATCH.value).astype(np.float32)
  y = rng.integers(0, num_classes, _BATCH.value).astype(np.int32) if num_classes else None
  n_train = TRAIN_DEVICES[name] if _TRAIN_DEVICES.value is None else _TRAIN_DEVICES.value
  train_devices = jax.devices()[:n_train or None]
  sides = dict(diffusers=torch_side(net, x, t, y, num_classes, samples),
               ours=jax_side(config, params, x, t, y, samples, train_devices))
  results, rounds = timed_rounds(sides, len(x), samples)
  theirs, ours, cost = results["diffusers"], results["ours"], sides["ours"][1]
  reference = sides["diffusers"][1]["out"]  # the timed evaluation's output: equal to diffusers' to float32 rounding
  max_rel_diff = float(np.max(np.abs(cost["out"] - reference)) / np.max(np.abs(reference)))
  ours.update(train_xla_mb=cost["train_xla_mb"], eval_xla_mb=cost["eval_xla_mb"],
              train_gflops_per_s=cost["train_flops"] * ours["train_images_per_s"] / len(x) / 1e9,
              eval_gflops_per_s=cost["eval_flops"] / ours["ms_per_eval"] / 1e6)
  ours.update(train_fraction_of_peak=ours["train_gflops_per_s"] * 1e9 / peak,
              eval_fraction_of_peak=ours["eval_gflops_per_s"] * 1e9 / peak)
  return dict(benchmark="vs_diffusers", model=name, kind=kind, params=int(n_params),
              diffusers_params=int(diffusers_params), num_classes=num_classes, batch=_BATCH.value, samples=samples,
              torch_threads=torch.get_num_threads(), backend=jax.default_backend(), jax_devices=jax.device_count(),
              train_devices=len(train_devices),
              **{f"diffusers_{k}": round(v, 3) for k, v in theirs.items()},
              **{f"ours_{k}": round(v, 3) for k, v in ours.items()}, ours_eval_max_rel_diff=max_rel_diff,
              train_speedup=round(ours["train_images_per_s"] / theirs["train_images_per_s"], 3),
              eval_speedup=round(theirs["ms_per_eval"] / ours["ms_per_eval"], 3),
              **{f"ddim_{n}_speedup": round(theirs[f"ddim_{n}_seconds"] / ours[f"ddim_{n}_seconds"], 3)
                 for n in samples},
              **{f"{k}_speedup_rounds": [round(r, 3) for r in v] for k, v in rounds.items()},
              **{f"{k}_speedup_range": f"{min(v):.2f}-{max(v):.2f}" for k, v in rounds.items()})


def main(_):
  unknown = [name for name in _MODELS.value if name not in KINDS]
  if unknown:
    raise app.UsageError(f"Unknown model(s) {unknown} in --models; valid: {', '.join(KINDS)}")
  # one JAX device per core, set before JAX creates its CPU backend (XLA_FLAGS=--xla_force_host_platform_device_count=1
  # compares one device)
  set_cpu_flags(devices=cpu_cores())
  peak = matmul_peak_flops()
  print(json.dumps({"benchmark": "matmul_peak", "gflops_per_s": round(peak / 1e9, 1)}), flush=True)
  samples = [int(n) for n in _SAMPLES.value]
  rows = []
  for name in _MODELS.value:
    rows.append(compare(name, peak, samples))
    print(json.dumps(rows[-1]), flush=True)
  ddim = [c for n in samples for c in (f"diffusers_ddim_{n}_seconds", f"ours_ddim_{n}_seconds", f"ddim_{n}_speedup",
                                        f"ddim_{n}_speedup_range")]
  cols = ["model", "params", "diffusers_train_images_per_s", "ours_train_images_per_s", "train_speedup",
          "train_speedup_range", "diffusers_ms_per_eval", "ours_ms_per_eval", "eval_speedup", "eval_speedup_range",
          *ddim,
          "diffusers_train_peak_mb", "ours_train_peak_mb", "ours_train_xla_mb", "ours_train_fraction_of_peak",
          "ours_eval_fraction_of_peak", "ours_eval_max_rel_diff"]
  print(tables.markdown_table(rows, cols))


if __name__ == "__main__":
  app.run(main)
