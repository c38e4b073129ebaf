"""The backbones study on the demo data: the demo's U-Net (configs/digits.py), a DiT (configs/digits_dit.py; Peebles &
Xie 2023) and a U-ViT (configs/digits_uvit.py; Bao et al. 2023) of about its parameter count, each trained on the same
schedule, target and batch for the same training time (each config's own number of steps), several seeds each,
through the ablation runner (resumable). Each model is sampled by
DDIM and DPM-Solver++(2M) at 10, 20 and 50 steps. Writes OUT/backbones.md and .csv (parameters, GFLOPs per image of
one forward pass from XLA's cost analysis, training images/s and minutes, FID-digits at each NFE, IS-digits and class
accuracy; mean ± std over seeds) and OUT/fid_vs_nfe.png, beside the ablation runner's own tables.

  python -m experiments.backbones_digits [--out=runs/backbones_digits] [--seeds=3] [--steps=0] [--dry_run]"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from benchmarks.xla_cost import compiled_cost
from diffusion_jax import build, tables
from diffusion_jax.config_files import load_config
from diffusion_jax.latent import diffusion_shape
from experiments import ablate

BACKBONES = {"U-Net": "configs/digits.py", "DiT": "configs/digits_dit.py", "U-ViT": "configs/digits_uvit.py"}
SAMPLERS = ("ddim", "dpm_solver++")
STEPS = (10, 20, 50)

_OUT = flags.DEFINE_string("out", "runs/backbones_digits", "Results directory.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per backbone.")
_STEPS = flags.DEFINE_integer("steps", 0, "Training steps of every run (0: each config's own, set to the demo's "
                               "training time on the 2-core CPU).")
_DRY = flags.DEFINE_bool("dry_run", False, "Only write and print the commands.")


def plan(out, seeds, steps=0):
  """Every run: one ablation point per backbone (its config's model.name, so the runs' names differ), trained for its
  config's own steps (each set to the demo's training time on the 2-core CPU) or for `steps`."""
  runs = []
  for path in BACKBONES.values():
    config = load_config(path)
    n = steps or config.training.num_steps
    fixed = [f"training.num_steps={n}", f"training.checkpoint_every={n}", "training.sample_every=0",
             "sample.runs=" + ",".join(f"{s}:{k}" for s in SAMPLERS for k in STEPS)]
    fixed += [f"optim.decay_steps={n}"] if config.optim.decay_steps else []  # the cosine decay ends with training
    runs += ablate.plan(path, [f"model.name={config.model.name}"], fixed, seeds, out)
  return runs


def network_cost(path, batch=128):
  """(parameters, GFLOPs per image of one forward pass) of a config's network, from XLA's cost analysis."""
  config = load_config(path)
  model, _ = build.setup(config)
  x = jnp.zeros((batch, *diffusion_shape(config)))
  t, y = jnp.full((batch,), 500.0), jnp.zeros((batch,), jnp.int32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), x, t, y)
  flops, _ = compiled_cost(jax.jit(lambda p, x: model.apply(p, x, t, y)), params, x)
  return sum(np.size(p) for p in jax.tree.leaves(params)), flops / batch / 1e9


def training_speed(workdir, batch):
  """Training images/s of a run from its log: the images of every logged interval but the first (which includes
  compilation) over their seconds."""
  with open(os.path.join(workdir, "training_log.json")) as f:
    records = json.load(f)["records"]
  first, last = records[0], records[-1]
  return (last["step"] - first["step"]) * batch / (last["seconds"] - first["seconds"])


def summary(runs, rows, out):
  """One row per backbone: size and cost, training speed, FID-digits per sampler and steps, IS-digits and class
  accuracy of DDIM-50; mean ± std over seeds."""
  by_name = {r["model.name"]: r for r in rows}
  cell = lambda r, m: f"{r[m + '_mean']:.3g} ± {r[m + '_std']:.2g}" if m + "_mean" in r else ""
  table = []
  for label, path in BACKBONES.items():
    name = load_config(path).model.name
    r = by_name.get(name, {})
    params, gflops = network_cost(path)
    batch = load_config(path).training.batch_size
    speeds = [training_speed(os.path.join(out, "runs", run["name"]), batch) for run in runs
              if run["combo"]["model.name"] == name and
              os.path.exists(os.path.join(out, "runs", run["name"], "training_log.json"))]
    row = {"backbone": label, "seeds": r.get("seeds", 0), "parameters (M)": f"{params / 1e6:.2f}",
           "GFLOPs / image": f"{gflops:.3f}",
           "train images/s": f"{np.mean(speeds):.0f} ± {np.std(speeds, ddof=1):.0f}" if len(speeds) > 1 else "",
           "train min": cell({k: v / 60 for k, v in r.items() if k.startswith("train_seconds")}, "train_seconds")}
    for s in SAMPLERS:
      for n in STEPS:
        row[f"FID {s} {n}"] = cell(r, f"{s}_{n}/fid_digits")
    row["IS ddim 50"], row["accuracy ddim 50"] = cell(r, "ddim_50/is_digits"), cell(r, "ddim_50/class_accuracy")
    table.append(row)
  return table


def plot_fid_vs_nfe(rows, path):
  curves, by_name = {}, {row["model.name"]: row for row in rows}
  for label, config_path in BACKBONES.items():
    r = by_name.get(load_config(config_path).model.name, {})
    for s in SAMPLERS:
      points = [(n, r[f"{s}_{n}/fid_digits_mean"]) for n in STEPS if f"{s}_{n}/fid_digits_mean" in r]
      if points:
        curves[f"{label}: {s}"] = points
  if curves:
    tables.plot_by_nfe(curves, "FID-digits", path, title="Backbones on the digits")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  out = _OUT.value
  runs = plan(out, _SEEDS.value, _STEPS.value)
  if _DRY.value:
    print("\n".join(ablate.write_commands(runs, out)))
    return
  status = ablate.execute(runs, out)
  rows = ablate.write_results(runs, out, status, title="Backbones on the digits (batch 128)")
  table = summary(runs, rows, out)
  columns = list(table[0])
  tables.write_csv(table, columns, os.path.join(out, "backbones.csv"))
  plot_fid_vs_nfe(rows, os.path.join(out, "fid_vs_nfe.png"))
  with open(os.path.join(out, "backbones.md"), "w") as f:
    f.write(f"# Backbones on the digits (batch 128, 500 samples per run, {_SEEDS.value} seeds)\n\n"
            "FID-digits by sampler and steps (leading spacing, the demo's); IS-digits and class accuracy of "
            "DDIM-50; GFLOPs per image of one forward pass (XLA's cost analysis, batch 128); mean ± std over seeds.\n\n"
            + tables.markdown_table(table, columns) + "\n\n![FID against steps](fid_vs_nfe.png)\n")
  logging.info("Wrote %s", os.path.join(out, "backbones.md"))


if __name__ == "__main__":
  app.run(main)
