"""The paths study on the demo data: DDPM's eps on the linear schedule, v on the cosine schedule, EDM (preconditioned
x0, log-normal sigma, EDM weighting), and rectified flow (velocity) with uniform, logit-normal(0, 1) and mode(1.29)
times (Esser et al. 2024, Table 1's axes), on configs/digits.py at one training budget, several seeds each, through
the ablation runner (resumable). Each model is sampled by its own family's sampler and by DPM-Solver++(2M) at 10, 20
and 50 steps, on trailing grids (every sampler starts at t = 1). Writes OUT/paths.md (one table, mean ± std over
seeds), OUT/fid_vs_nfe.png and OUT/weighting.png (the formulations' effective weightings over log-SNR, Kingma & Gao
2023), beside the ablation runner's own tables.

  python -m experiments.paths_digits [--out=runs/paths_digits] [--seeds=3] [--steps=600] [--dry_run]"""
import os

from absl import app, flags, logging

import numpy as np

from diffusion_jax import build, tables
from diffusion_jax.config_files import load_config
from diffusion_jax.samplers import get_sampler
from experiments import ablate

KEYS = ("diffusion.sde", "diffusion.schedule", "diffusion.prediction", "model.precondition", "training.weighting",
        "training.t_sampling")
# label -> (values of KEYS, the formulation's own sampler and its run options)
FORMULATIONS = {
    "eps, linear (DDPM)": (("", "linear", "eps", "", "uniform", "uniform"), "ddim"),
    "v, cosine": (("", "cosine", "v", "", "uniform", "uniform"), "ddim"),
    "EDM": (("edm", "linear", "x0", "edm", "edm", "lognormal_sigma"), "edm"),
    "RF, uniform t": (("rectified_flow", "linear", "velocity", "", "uniform", "uniform"), "flow"),
    "RF, logit-normal(0, 1)": (("rectified_flow", "linear", "velocity", "", "uniform", "logit_normal"), "flow"),
    "RF, mode(1.29)": (("rectified_flow", "linear", "velocity", "", "uniform", "mode"), "flow"),
}
STEPS = (10, 20, 50)

_OUT = flags.DEFINE_string("out", "runs/paths_digits", "Results directory.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per formulation.")
_STEPS = flags.DEFINE_integer("steps", 600, "Training steps of every run (the fixed budget).")
_DRY = flags.DEFINE_bool("dry_run", False, "Only write and print the commands.")


def sampler_runs(own):
  return ",".join(f"{name}:{n}" for name in (own, "dpm_solver++") for n in STEPS)


def plan(out, seeds, steps):
  """Every run of the study: one ablation axis point per formulation, each with its own sampler runs."""
  runs = []
  for values, own in FORMULATIONS.values():
    fixed = [f"training.num_steps={steps}", f"training.checkpoint_every={steps}", "training.sample_every=0",
             "training.mode_scale=1.29", "sample.spacing=trailing", f"sample.runs={sampler_runs(own)}"]
    runs += ablate.plan("configs/digits.py", ["+".join(KEYS) + "=" + "+".join(values)], fixed, seeds, out)
  return runs


def summary(rows):
  """One row per formulation: FID-digits of its sampler and of DPM-Solver++, IS-digits and class accuracy of its
  sampler, at 10 / 20 / 50 steps, mean ± std over seeds."""
  by_values = {tuple(r[k] for k in KEYS): r for r in rows}
  cell = lambda r, m: f"{r[m + '_mean']:.3g} ± {r[m + '_std']:.2g}" if m + "_mean" in r else ""
  out = []
  for label, (values, own) in FORMULATIONS.items():
    r = by_values.get(values, {})
    row = {"formulation": label, "sampler": own, "seeds": r.get("seeds", 0)}
    for name, tag in ((own, "own"), ("dpm_solver++", "DPM++")):
      for n in STEPS:
        row[f"FID {tag} {n}"] = cell(r, f"{name}_{n}/fid_digits")
    for n in STEPS:
      row[f"IS {n}"], row[f"accuracy {n}"] = cell(r, f"{own}_{n}/is_digits"), cell(r, f"{own}_{n}/class_accuracy")
    out.append(row)
  return out


def plot_fid_vs_nfe(rows, path):
  """FID-digits (mean over seeds) against network evaluations: one line per formulation and sampler."""
  by_values = {tuple(r[k] for k in KEYS): r for r in rows}
  curves = {}
  for label, (values, own) in FORMULATIONS.items():
    r = by_values.get(values, {})
    for name in (own, "dpm_solver++"):
      points = [(get_sampler(name).nfe(n, {}), r[f"{name}_{n}/fid_digits_mean"]) for n in STEPS
                if f"{name}_{n}/fid_digits_mean" in r]
      if points:
        curves[f"{label}: {name}"] = points
  if curves:
    tables.plot_by_nfe(curves, "FID-digits", path, title="Paths on the digits")


def weightings(lam=np.linspace(-10.0, 10.0, 201)):
  """{label: (lambda, w)}: each formulation's effective weighting (build.effective_weighting) on one log-SNR grid,
  normalised to integrate to 1 on it, so the curves compare."""
  curves = {}
  for label, (values, _) in FORMULATIONS.items():
    config = load_config("configs/digits.py")
    for key, value in zip(KEYS, values):
      ablate.set_value(config, key, value)
    config.training.mode_scale = 1.29
    _, process = build.setup(config)
    curves[label] = (lam, build.effective_weighting(config, process, lam))
  return curves


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  out = _OUT.value
  runs = plan(out, _SEEDS.value, _STEPS.value)
  if _DRY.value:
    print("\n".join(ablate.write_commands(runs, out)))
    return
  status = ablate.execute(runs, out)
  rows = ablate.write_results(runs, out, status, title=f"Paths on the digits ({_STEPS.value} steps, batch 128)")
  columns = ["formulation", "sampler", "seeds"] + [f"{m} {n}" for m in ("FID own", "FID DPM++", "IS", "accuracy")
                                                    for n in STEPS]
  table = summary(rows)
  tables.write_csv(table, columns, os.path.join(out, "paths.csv"))
  plot_fid_vs_nfe(rows, os.path.join(out, "fid_vs_nfe.png"))
  tables.plot_weightings(weightings(), os.path.join(out, "weighting.png"))
  with open(os.path.join(out, "paths.md"), "w") as f:
    f.write(f"# Paths on the digits ({_STEPS.value} steps, batch 128, 500 samples per run, "
            f"{_SEEDS.value} seeds)\n\nFID-digits by sampler steps (the formulation's own sampler, and DPM-Solver++;"
            " trailing spacing, so every sampler starts from t = 1); IS-digits and class accuracy of its own sampler;"
            " mean ± std over seeds.\n\n"
            + tables.markdown_table(table, columns) + "\n\n![FID against steps](fid_vs_nfe.png)\n\n"
            "![effective weightings](weighting.png)\n")
  logging.info("Wrote %s", os.path.join(out, "paths.md"))


if __name__ == "__main__":
  app.run(main)
