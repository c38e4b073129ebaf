"""Every sampler at a grid of network evaluations (NFE), on one trained model or on the Gaussian-mixture oracle.

On a model: FID / IS (the network of config.eval.features) / class accuracy and wall time per run, the runs of a
target NFE <= --seeded_nfe again under --seeds sampling seeds (mean ± std), written as CSV, Markdown (full table +
FID-against-NFE pivot) and a PNG plot of FID against NFE. Resumable: finished runs are kept in OUT/rows.json.

  python -m experiments.compare_samplers --config=configs/digits.py --workdir=runs/digits [--nfe=5,10,15,20,50]
      [--samplers=ddim,unipc_bh1,...] [--seeds=3] [--seeded_nfe=10] [--tolerances=1e-2] [--num_samples=500]
      [--config.sample.spacing=trailing --config.sample.clip_x0=False] [--out=DIR]

With --oracle no model is needed: every sampler is driven by the exact eps of a Gaussian mixture (8 sharp modes on a
ring, evaluation/gaussian_mixture.py) on the config's schedule, and each run's samples are scored against the mixture
itself: MMD^2 (kernel bandwidth 0.1, the exact mixture terms), the Frechet distance to its exact moments and the
mode-weight error, all seeds at every NFE.

  python -m experiments.compare_samplers --oracle [--config.sample.spacing=trailing] [--num_samples=20000]
      [--out=runs/compare_samplers_oracle]"""
import os
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from diffusion_jax import build, distributed, tables
from diffusion_jax.evaluation import metrics
from diffusion_jax.evaluation.features import is_score_field, metric_names
from diffusion_jax.evaluation.gaussian_mixture import GaussianMixture
from diffusion_jax.sample import on_sampler_process, run_label, sampler_kwargs, sampler_setup
from diffusion_jax.samplers import get_sampler
from diffusion_jax.schedules import get_schedule
from experiments.scoring import reseeded, score_runs

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


ORACLE = GaussianMixture.ring()
ORACLE_BANDWIDTH = 0.1  # twice the modes' std: the kernel resolves each mode's shape
ORACLE_METRICS = ("mmd2", "fd_moments", "mode_weight_error")


def columns(names):
  return ("run", "sampler", "steps", "target_nfe", "nfe", "seed", names.fid, names.inception_score, "class_accuracy",
          "num_samples", "seconds")


FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a script, so that experiments can be imported together)."""
  config_flags.DEFINE_config_file("config", "configs/digits.py", "Config the model was trained with.")
  flags.DEFINE_string("workdir", "runs/digits", "Workdir holding the trained checkpoint.")
  flags.DEFINE_list("nfe", ["5", "10", "15", "20", "50"], "Target network evaluations per sample.")
  flags.DEFINE_list("samplers", list(FAMILIES), f"Sampler families: {', '.join(FAMILIES)}.")
  flags.DEFINE_list("tolerances", ["1e-2", "1e-3", "1e-4"], "rtol = atol of the adaptive RK45 ODE runs.")
  flags.DEFINE_integer("num_samples", None, "Samples per run (default config.sample.num_samples; oracle 20000).")
  flags.DEFINE_integer("seeds", 3, "Sampling seeds of the runs at a target NFE <= --seeded_nfe (all, with --oracle).")
  flags.DEFINE_integer("seeded_nfe", 10, "The largest target NFE sampled under every seed.")
  flags.DEFINE_bool("oracle", False, "Drive the samplers by the exact Gaussian-mixture model instead of a checkpoint.")
  flags.DEFINE_string("out", None, "Output directory (default WORKDIR/compare_samplers; oracle: "
                      "runs/compare_samplers_oracle).")


def family_runs(config, families, nfes, applies=lambda name: True):
  """(sampler, steps, options, target NFE) of each family's fixed-step runs whose step count the schedule has, for
  the families whose sampler `applies` (a ValueError from it says why not: logged, and the family skipped)."""
  unknown = set(families) - set(FAMILIES)
  if unknown:
    raise ValueError(f"Unknown sampler families {sorted(unknown)}; valid: {', '.join(FAMILIES)}")
  runs = []
  for fam in families:
    name, opts, steps_for = FAMILIES[fam]
    try:
      applies(name)
    except ValueError as e:
      logging.warning("skipping %s: %s", fam, e)
      continue
    if name == "pc" and opts.get("corrector") == "langevin":  # Song et al. 2021, App. G: r = 0.16 (VE), 0.01 (VP)
      opts = {**opts, "snr": 0.16 if config.diffusion.sde in ("ve", "edm") else 0.01}
    runs += [(name, steps_for(n), dict(opts), n) for n in nfes if 1 <= steps_for(n) <= config.diffusion.num_timesteps]
  return runs


def plan(config, model, process, families, nfes, tolerances):
  """The (sampler, steps, options, target NFE or None for adaptive) runs of the grid that apply to this model."""
  runs = family_runs(config, families, nfes, lambda name: sampler_setup(config, model, None, process, name))
  if "ode" in [FAMILIES[f][0] for f in families]:
    runs += [("ode", 20, {"rtol": float(t), "atol": float(t)}, None) for t in tolerances]
  return runs


def compare(config, workdir, out, families, nfes, tolerances, num_samples, seeds=1, seeded_nfe=10):
  model, process = build.setup(config)
  runs = [(run_label(name, steps, opts), name, steps, opts, {"target_nfe": target})
          for name, steps, opts, target in plan(config, model, process, families, nfes, tolerances)]
  runs += reseeded([r for r in runs if r[4]["target_nfe"] is not None and r[4]["target_nfe"] <= seeded_nfe], seeds)
  rows = score_runs(config, workdir, out, runs, num_samples)
  if jax.process_index() == 0:
    write_results(rows, out, num_samples, metric_names(config.eval.features))
  return rows


def seed_summary(rows, metric, options):
  """One row per (sampler family, target NFE): `metric` as mean ± std (ddof = 1) over its seeds, in the column
  metric + "_mean_std" (the value alone for one seed), with the mean and the seed count."""
  groups = {}
  for r in rows:
    if r.get("target_nfe") is not None and r.get(metric) is not None:
      groups.setdefault((tables.family(r, options), r["target_nfe"]), []).append(r)
  out = []
  for (_, target), group in sorted(groups.items()):
    v = np.array([r[metric] for r in group], np.float64)
    cell = f"{v.mean():.3g} ± {v.std(ddof=1):.2g}" if len(v) > 1 else f"{v[0]:.3g}"
    out.append({**{k: group[0][k] for k in ("sampler", "nfe", *options) if k in group[0]}, "target_nfe": target,
                metric + "_mean": float(v.mean()), metric + "_std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                metric + "_mean_std": cell, "seeds": len(v)})
  return out


def write_results(rows, out, num_samples, names):
  options = {k for r in rows for k in r if not is_score_field(k)} - set(columns(names)) - {"base_run"}
  rows = sorted(rows, key=lambda r: (tables.family(r, options), r["nfe"], r.get("seed", 0)))
  cols = list(columns(names)) + sorted(options)
  tables.write_csv(rows, cols, os.path.join(out, "results.csv"))
  summary = seed_summary(rows, names.fid, options)
  tables.write_csv(summary, ["sampler", "target_nfe", "nfe", "seeds", names.fid + "_mean", names.fid + "_std"]
                   + sorted(options), os.path.join(out, "summary.csv"))
  fid, _ = tables.pivot_by_nfe(summary, names.fid + "_mean_std", options, column="target_nfe")
  _, curves = tables.pivot_by_nfe(summary, names.fid + "_mean", options, column="target_nfe")
  secs, _ = tables.pivot_by_nfe([r for r in rows if "seed" not in r], "seconds", options, column="target_nfe")
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
        "Heun ODE 2S + 1 with its final denoising step; the NFE each run used is in the last table. A cell of several "
        "sampling seeds is mean ± std (ddof = 1; summary.csv).", "", fid, "",
        "![FID against NFE](fid_vs_nfe.png)", "", "## Adaptive RK45 probability-flow ODE", "",
        tables.markdown_table(adaptive, ["rtol", "nfe", names.fid, names.inception_score, "class_accuracy", "seconds"]),
        "", "## Seconds per run (compiled)", "", secs, "", "## All runs", "", tables.markdown_table(rows, cols), ""]))


def oracle(config, out, families, nfes, seeds, num_samples):
  """Every family's runs (plan) driven by ORACLE's exact eps on the config's schedule, each under `seeds` sampling
  seeds, scored against the mixture itself (ORACLE_METRICS). Writes oracle.csv / .md and mmd_vs_nfe.png."""
  schedule = get_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)
  model_fn = ORACLE.model_fn(schedule, "eps")
  runs = family_runs(config, families, nfes)
  rows = []
  mean, cov = ORACLE.moments()
  for name, steps, opts, target in tqdm(runs, desc="oracle runs"):
    fn, on, prediction = on_sampler_process(config, model_fn, schedule, name, "eps")
    sample = jax.jit(lambda rng: get_sampler(name)(fn, on, (num_samples, ORACLE.dim), rng, num_steps=steps,
                                                   prediction=prediction, **sampler_kwargs(config, name, opts)))
    sample = sample.lower(jax.random.PRNGKey(0)).compile()  # once per run, for every seed
    for seed in range(seeds):
      start = time.time()
      x = np.asarray(sample(jax.random.PRNGKey(seed)), np.float64)
      row = {"run": run_label(name, steps, opts), "sampler": name, "steps": steps, "target_nfe": target,
             "seed": seed, "nfe": get_sampler(name).nfe(steps, opts), "seconds": round(time.time() - start, 2), **opts}
      if np.isfinite(x).all():
        row.update(mmd2=ORACLE.mmd2(x, ORACLE_BANDWIDTH), mode_weight_error=ORACLE.mode_weight_error(x),
                   fd_moments=metrics.frechet_distance(x.mean(0), np.cov(x, rowvar=False), mean, cov))
      rows.append(row)
  exact = np.asarray(ORACLE.sample(jax.random.PRNGKey(seeds), num_samples), np.float64)
  floor = {"mmd2": ORACLE.mmd2(exact, ORACLE_BANDWIDTH), "mode_weight_error": ORACLE.mode_weight_error(exact),
           "fd_moments": metrics.frechet_distance(exact.mean(0), np.cov(exact, rowvar=False), mean, cov)}
  write_oracle(rows, floor, out, num_samples, seeds, config.sample.spacing)
  return rows, floor


def write_oracle(rows, floor, out, num_samples, seeds, spacing):
  options = {k for r in rows for k in r} - {"run", "sampler", "steps", "target_nfe", "seed", "nfe", "seconds",
                                           *ORACLE_METRICS}
  os.makedirs(out, exist_ok=True)
  cols = ["run", "sampler", "steps", "target_nfe", "nfe", "seed", *ORACLE_METRICS, "seconds", *sorted(options)]
  tables.write_csv(rows, cols, os.path.join(out, "oracle.csv"))
  lines = [f"# Samplers on the Gaussian-mixture oracle ({num_samples} samples per run, {seeds} seeds, {spacing} "
           "spacing)", "", f"The exact eps of {len(ORACLE.weights)} modes of std {ORACLE.std} on a ring of radius 1 "
           "drives each sampler; its samples are scored against the mixture itself. Cells: mean ± std over seeds. "
           f"The floor is {num_samples} exact samples' score: " + ", ".join(f"{k} {v:.2g}" for k, v in floor.items())
           + ".", ""]
  curves = {}
  for metric, title in (("mmd2", "MMD^2 (kernel bandwidth 0.1)"), ("fd_moments", "Frechet distance to the exact "
                        "mean and covariance"), ("mode_weight_error", "Mode-weight error (total variation)")):
    summary = seed_summary(rows, metric, options)
    table, _ = tables.pivot_by_nfe(summary, metric + "_mean_std", options, column="target_nfe")
    lines += [f"## {title}", "", table, ""]
    if metric == "mmd2":
      curves = tables.pivot_by_nfe(summary, "mmd2_mean", options, column="target_nfe")[1]
  nfes = sorted({r["nfe"] for r in rows})
  curves["exact samples: |MMD^2|, the noise floor"] = [(n, abs(floor["mmd2"])) for n in nfes]
  tables.plot_by_nfe(curves, "MMD^2 to the exact mixture", os.path.join(out, "mmd_vs_nfe.png"),
                     f"Samplers on the exact mixture model ({num_samples} samples, mean of {seeds} seeds)")
  lines += ["![MMD against NFE](mmd_vs_nfe.png)", ""]
  with open(os.path.join(out, "oracle.md"), "w") as f:
    f.write("\n".join(lines))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  distributed.initialize()  # one of several processes (diffusion_jax.launch, a TPU pod, SLURM); else a no-op
  config, nfes = FLAGS.config, [int(n) for n in FLAGS.nfe]
  if FLAGS.oracle:
    out = FLAGS.out or "runs/compare_samplers_oracle"
    oracle(config, out, FLAGS.samplers, nfes, FLAGS.seeds, FLAGS.num_samples or 20000)
    logging.info("Wrote %s", os.path.join(out, "oracle.md"))
    return
  out = FLAGS.out or os.path.join(FLAGS.workdir, "compare_samplers")
  compare(config, FLAGS.workdir, out, FLAGS.samplers, nfes, FLAGS.tolerances,
          FLAGS.num_samples or config.sample.num_samples, FLAGS.seeds, FLAGS.seeded_nfe)
  logging.info("Wrote %s", os.path.join(out, "results.md"))


if __name__ == "__main__":
  define_flags()
  app.run(main)
