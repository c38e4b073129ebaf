"""Every sampler on one trained model at a grid of network evaluations (NFE): FID / IS / class accuracy and wall
time per run, written as CSV, Markdown (full table + FID-against-NFE pivot) and a PNG plot of FID against NFE.
Resumable: finished runs are kept in OUT/rows.json and skipped.

  python -m experiments.compare_samplers --config=configs/digits.py --workdir=runs/digits [--nfe=10,20,50,100,1000]
      [--samplers=ddim,edm,...] [--tolerances=1e-2,1e-3,1e-4] [--num_samples=500] [--out=DIR]"""
from diffusion_jax.xla_flags import set_cpu_flags

set_cpu_flags()

import json  # noqa: E402
import os  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from tqdm import tqdm  # noqa: E402

from diffusion_jax import parallel, tables, train  # noqa: E402
from diffusion_jax.evaluate import digits_scorer  # noqa: E402
from diffusion_jax.sample import generate_samples, run_label, sampler_setup  # noqa: E402

# family -> (sampler, options, steps for a target NFE); each run reports the NFE it actually used
FAMILIES = {
    "ddpm": ("ddpm", {}, lambda n: n),
    "ddim": ("ddim", {}, lambda n: n),
    "dpm_solver++": ("dpm_solver++", {}, lambda n: n),
    "edm": ("edm", {}, lambda n: (n + 1) // 2),
    "pc_euler_maruyama": ("pc", {"predictor": "euler_maruyama", "corrector": "none"}, lambda n: n),
    "pc_reverse_diffusion_langevin": ("pc", {"predictor": "reverse_diffusion", "corrector": "langevin"},
                                      lambda n: n // 2),
    "ode_euler": ("ode", {"solver": "euler"}, lambda n: n - 1),
    "ode_heun": ("ode", {"solver": "heun"}, lambda n: (n - 1) // 2),
}
COLUMNS = ("run", "sampler", "steps", "target_nfe", "nfe", "fid_digits", "is_digits", "class_accuracy", "seconds", "nonfinite_fraction")

_CONFIG = config_flags.DEFINE_config_file("config", "configs/digits.py", "Config the model was trained with.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/digits", "Workdir holding the trained checkpoint.")
_NFE = flags.DEFINE_list("nfe", ["10", "20", "50", "100", "1000"], "Target network evaluations per sample.")
_SAMPLERS = flags.DEFINE_list("samplers", list(FAMILIES), f"Sampler families: {', '.join(FAMILIES)}.")
_TOL = flags.DEFINE_list("tolerances", ["1e-2", "1e-3", "1e-4"], "rtol = atol of the adaptive RK45 ODE runs.")
_NUM = flags.DEFINE_integer("num_samples", None, "Samples per run (default config.sample.num_samples).")
_OUT = flags.DEFINE_string("out", None, "Output directory (default WORKDIR/compare_samplers).")


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
      opts = {**opts, "snr": 0.16 if config.diffusion.sde == "ve" else 0.01}
    for n in nfes:
      steps = steps_for(n)
      if 1 <= steps <= config.diffusion.num_timesteps:
        runs.append((name, steps, dict(opts), n))
  if "ode" in [FAMILIES[f][0] for f in families]:
    runs += [("ode", 20, {"rtol": float(t), "atol": float(t)}, None) for t in tolerances]
  return runs


def compare(config, workdir, out, families, nfes, tolerances, num_samples):
  mesh = parallel.make_mesh()
  model, process = train.setup(config)
  params = train.load_params(config, workdir, mesh)
  scorer, _ = digits_scorer(config, workdir)
  os.makedirs(out, exist_ok=True)
  rows_path = os.path.join(out, "rows.json")
  rows = json.load(open(rows_path)) if os.path.exists(rows_path) else []
  done = {r["run"] for r in rows}
  todo = [r for r in plan(config, model, process, families, nfes, tolerances) if run_label(*r[:3]) not in done]
  for name, steps, opts, target in tqdm(todo, desc="sampler runs"):
    try:
      images, labels, seconds, nfe = generate_samples(config, model, process, params, mesh, name, steps, num_samples,
                                                      jax.random.PRNGKey(config.seed + 1), **opts)
    except ValueError as e:  # a step count the sampler does not support (e.g. PC-Langevin on VP below 21 steps)
      logging.warning("skipping %s: %s", run_label(name, steps, opts), e)
      continue
    bad = float((~np.isfinite(images).all(axis=(1, 2, 3))).mean())
    rows.append(dict(run=run_label(name, steps, opts), sampler=name, steps=steps, target_nfe=target, nfe=int(round(nfe)),
                     seconds=round(seconds, 2), nonfinite_fraction=bad, **opts, **scorer(images, labels)))
    with open(rows_path + ".tmp", "w") as f:
      json.dump(rows, f, indent=1)
    os.replace(rows_path + ".tmp", rows_path)
  write_results(rows, out, num_samples)
  return rows


def write_results(rows, out, num_samples):
  options = {k for r in rows for k in r} - set(COLUMNS) - {"is_digits_std"}
  rows = sorted(rows, key=lambda r: (tables.family(r, options), r["nfe"]))
  columns = list(COLUMNS) + sorted(options)
  tables.write_csv(rows, columns, os.path.join(out, "results.csv"))
  fid, curves = tables.pivot_by_nfe(rows, "fid_digits", options, column="target_nfe")
  secs, _ = tables.pivot_by_nfe(rows, "seconds", options, column="target_nfe")
  adaptive = [r for r in rows if r.get("target_nfe") is None]
  for r in adaptive:
    curves.setdefault(tables.family(r, options) + " (RK45)", []).append((r["nfe"], r["fid_digits"]))
  curves.pop(tables.family({"sampler": "ode"}, options), None)
  tables.plot_by_nfe(curves, "FID-digits", os.path.join(out, "fid_vs_nfe.png"),
                     f"FID-digits against NFE ({num_samples} samples per run)")
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join([
        f"# Samplers compared ({num_samples} samples per run)", "", "## FID-digits at a target NFE", "",
        "Columns are the target number of network evaluations; EDM uses 2S - 1 (one fewer for even targets) and the "
        "Heun ODE 2S + 1 with its final denoising step; the NFE each run used is in the last table.", "", fid, "",
        "![FID against NFE](fid_vs_nfe.png)", "", "## Adaptive RK45 probability-flow ODE", "",
        tables.markdown_table(adaptive, ["rtol", "nfe", "fid_digits", "is_digits", "class_accuracy", "seconds"]), "",
        "## Seconds per run (compiled)", "", secs, "", "## All runs", "", tables.markdown_table(rows, columns), ""]))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  out = _OUT.value or os.path.join(_WORKDIR.value, "compare_samplers")
  compare(config, _WORKDIR.value, out, _SAMPLERS.value, [int(n) for n in _NFE.value], _TOL.value,
          _NUM.value or config.sample.num_samples)
  logging.info("Wrote %s", os.path.join(out, "results.md"))


if __name__ == "__main__":
  app.run(main)
