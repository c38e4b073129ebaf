"""Every sampler on one trained model at a grid of network evaluations (NFE): FID / IS (the network of
config.eval.features) / class accuracy and wall time per run, written as CSV, Markdown (full table + FID-against-NFE
pivot) and a PNG plot of FID against NFE. Resumable: finished runs are kept in OUT/rows.json and skipped.

  python -m experiments.compare_samplers --config=configs/digits.py --workdir=runs/digits [--nfe=10,20,50,100,1000]
      [--samplers=ddim,edm,...] [--tolerances=1e-2,1e-3,1e-4] [--num_samples=500] [--out=DIR]"""
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from diffusion_jax import build, distributed, tables
from diffusion_jax.evaluation.features import metric_names
from diffusion_jax.sample import run_label, sampler_setup
from experiments.scoring import score_runs

# family -> (sampler, options, steps for a target NFE); each run reports the NFE it actually used
FAMILIES = {
    "ddpm": ("ddpm", {}, lambda n: n),
    "ddim": ("ddim", {}, lambda n: n),
    "dpm_solver++": ("dpm_solver++", {}, lambda n: n),
    "dpm_solver++_3m": ("dpm_solver++", {"order": 3}, lambda n: n),
    "dpm_solver++_2s": ("dpm_solver++_2s", {}, lambda n: n),
    "sde_dpm_solver++": ("sde_dpm_solver++", {}, lambda n: n),
    "unipc_bh1": ("unipc", {"variant": "bh1", "order": 3}, lambda n: n),
    "unipc_bh2": ("unipc", {"variant": "bh2", "order": 3}, lambda n: n),
    "deis": ("deis", {"order": 3}, lambda n: n),
    "euler_ancestral": ("euler_ancestral", {}, lambda n: n),
    "edm": ("edm", {}, lambda n: (n + 1) // 2),
    "pc_euler_maruyama": ("pc", {"predictor": "euler_maruyama", "corrector": "none"}, lambda n: n),
    "pc_reverse_diffusion_langevin": ("pc", {"predictor": "reverse_diffusion", "corrector": "langevin"},
                                      lambda n: n // 2),
    "ode_euler": ("ode", {"solver": "euler"}, lambda n: n - 1),
    "ode_heun": ("ode", {"solver": "heun"}, lambda n: (n - 1) // 2),
}


def columns(names):
  return ("run", "sampler", "steps", "target_nfe", "nfe", names.fid, names.inception_score, "class_accuracy",
          "num_samples", "seconds")


FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a script, so that experiments can be imported together)."""
  config_flags.DEFINE_config_file("config", "configs/digits.py", "Config the model was trained with.")
  flags.DEFINE_string("workdir", "runs/digits", "Workdir holding the trained checkpoint.")
  flags.DEFINE_list("nfe", ["10", "20", "50", "100", "1000"], "Target network evaluations per sample.")
  flags.DEFINE_list("samplers", list(FAMILIES), f"Sampler families: {', '.join(FAMILIES)}.")
  flags.DEFINE_list("tolerances", ["1e-2", "1e-3", "1e-4"], "rtol = atol of the adaptive RK45 ODE runs.")
  flags.DEFINE_integer("num_samples", None, "Samples per run (default config.sample.num_samples).")
  flags.DEFINE_string("out", None, "Output directory (default WORKDIR/compare_samplers).")


def plan(config, model, process, families, nfes, tolerances):
  """The (sampler, steps, options, target NFE or None for adaptive) runs of the grid that apply to this model."""
  unknown = set(families) - set(FAMILIES)
  if unknown:
    raise ValueError(f"Unknown sampler families {sorted(unknown)}; valid: {', '.join(FAMILIES)}")
  runs = []
  for fam in families:
    name, opts, steps_for = FAMILIES[fam]
    try:
      sampler_setup(config, model, None, process, name)
    except ValueError as e:
      logging.warning("skipping %s: %s", fam, e)
      continue
    if name == "pc" and opts.get("corrector") == "langevin":  # Song et al. 2021, App. G: r = 0.16 (VE), 0.01 (VP)
      opts = {**opts, "snr": 0.16 if config.diffusion.sde in ("ve", "edm") else 0.01}
    for n in nfes:
      steps = steps_for(n)
      if 1 <= steps <= config.diffusion.num_timesteps:
        runs.append((name, steps, dict(opts), n))
  if "ode" in [FAMILIES[f][0] for f in families]:
    runs += [("ode", 20, {"rtol": float(t), "atol": float(t)}, None) for t in tolerances]
  return runs


def compare(config, workdir, out, families, nfes, tolerances, num_samples):
  model, process = build.setup(config)
  runs = [(run_label(name, steps, opts), name, steps, opts, {"target_nfe": target})
          for name, steps, opts, target in plan(config, model, process, families, nfes, tolerances)]
  rows = score_runs(config, workdir, out, runs, num_samples)
  if jax.process_index() == 0:
    write_results(rows, out, num_samples, metric_names(config.eval.features))
  return rows


def write_results(rows, out, num_samples, names):
  options = {k for r in rows for k in r} - set(columns(names)) - {names.inception_score_std}
  rows = sorted(rows, key=lambda r: (tables.family(r, options), r["nfe"]))
  cols = list(columns(names)) + sorted(options)
  tables.write_csv(rows, cols, os.path.join(out, "results.csv"))
  fid, curves = tables.pivot_by_nfe(rows, names.fid, options, column="target_nfe")
  secs, _ = tables.pivot_by_nfe(rows, "seconds", options, column="target_nfe")
  adaptive = [r for r in rows if r.get("target_nfe") is None]
  for r in adaptive:
    curves.setdefault(tables.family(r, options) + " (RK45)", []).append((r["nfe"], r[names.fid]))
  curves.pop(tables.family({"sampler": "ode"}, options), None)
  tables.plot_by_nfe(curves, names.fid_label, os.path.join(out, "fid_vs_nfe.png"),
                     f"{names.fid_label} against NFE ({num_samples} samples per run)")
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join([
        f"# Samplers compared ({num_samples} samples per run)", "", f"## {names.fid_label} at a target NFE", "",
        "Columns are the target number of network evaluations; EDM uses 2S - 1 (one fewer for even targets) and the "
        "Heun ODE 2S + 1 with its final denoising step; the NFE each run used is in the last table.", "", fid, "",
        "![FID against NFE](fid_vs_nfe.png)", "", "## Adaptive RK45 probability-flow ODE", "",
        tables.markdown_table(adaptive, ["rtol", "nfe", names.fid, names.inception_score, "class_accuracy", "seconds"]),
        "", "## Seconds per run (compiled)", "", secs, "", "## All runs", "", tables.markdown_table(rows, cols), ""]))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  distributed.initialize()  # one of several processes (diffusion_jax.launch, a TPU pod, SLURM); else a no-op
  config = FLAGS.config
  out = FLAGS.out or os.path.join(FLAGS.workdir, "compare_samplers")
  compare(config, FLAGS.workdir, out, FLAGS.samplers, [int(n) for n in FLAGS.nfe], FLAGS.tolerances,
          FLAGS.num_samples or config.sample.num_samples)
  logging.info("Wrote %s", os.path.join(out, "results.md"))


if __name__ == "__main__":
  define_flags()
  app.run(main)
