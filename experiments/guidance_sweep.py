"""Guidance methods on one trained model: classifier guidance, classifier-free guidance (CFG), CFG limited to an
interval of noise levels (Kynkaanniemi et al. 2024), CFG rescale (Lin et al. 2024), adaptive projected guidance (APG;
Sadat et al. 2024) and autoguidance by a weaker model (Karras et al. 2024), each swept over its strength with one
sampler and the same samples per point, scored by FID and IS with the network of config.eval.features and, with the
digits classifier, by the accuracy of the samples' labels (a clean-image classifier, never the guiding one). The best
point of each curve (lowest FID) is sampled again with more seeds. Writes results.csv / .md (every point),
best.csv / .md (each method's best strength, mean ± std over seeds), fid_vs_is.png and fid_vs_accuracy.png (a curve
per method). Resumable: finished runs are kept in OUT/rows.json and skipped.

  python -m experiments.guidance_sweep --config=configs/digits_classifier.py --workdir=runs/digits_cfg
      [--guide=runs/digits_small] [--w=0,0.25,0.5,1,2,4] [--s=0,1,2,4,7] [--sampler=ddim:50] [--per_class=50]
      [--methods=cfg,interval,rescale,apg,autoguidance,classifier] [--seeds=3]

Methods: `cfg`, eps(x, y) + w (eps(x, y) - eps(x, null)); `interval`, CFG only where sigma_t / alpha_t lies in
--interval (EDM2's 0.28-5.42 by default), unguided elsewhere; `rescale`, CFG with rescale phi = 0.7 on x0; `apg`, APG
on x0 (eta 0, norm threshold and momentum below); `autoguidance`, D + w (D - D_guide) with the model of
--guide=WORKDIR[:step]; `classifier`, classifier guidance of the model's unconditional mode (w = -1, the null label;
an unconditional model as it is) with scale s; `cond_classifier`, classifier guidance of the conditional model (w = 0),
as in Dhariwal & Nichol's Table 4. w = 0 (the unguided conditional model) starts every w curve."""
import os

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from absl import app, flags, logging
from ml_collections import config_flags

from diffusion_jax import distributed, parallel, tables
from diffusion_jax.evaluation.features import metric_names
from diffusion_jax.sample import run_label
from diffusion_jax.samplers import parse_runs
from diffusion_jax.build import load_classifier
from experiments.scoring import reseeded, score_runs

APG = {"apg": True, "apg_eta": 0.0, "apg_r": 2.0, "apg_beta": -0.5}
# method -> (label, strength option, fixed options); autoguidance's guide and the interval come from the flags
METHODS = {
    "cfg": ("classifier-free (w)", "w", {}),
    "interval": ("CFG in an interval (w)", "w", {"interval": None}),
    "rescale": ("CFG + rescale 0.7 (w)", "w", {"rescale": 0.7}),
    "apg": ("APG (w)", "w", APG),
    "autoguidance": ("autoguidance (w)", "w", {"guide": None}),
    "classifier": ("classifier, unconditional model (s)", "s", {"w": -1.0}),
    "cond_classifier": ("classifier, conditional model (s)", "s", {}),
}


def columns(names):
  return ("method", "w", "s", names.fid, names.inception_score, names.inception_score_std, "class_accuracy",
          "num_samples", "nfe", "seconds", "run")


def best_columns(names):
  return ("method", "strength", "seeds", names.fid + "_mean", names.fid + "_std", names.inception_score + "_mean",
          "class_accuracy_mean", "fid_unguided")


FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a script, so that experiments can be imported together)."""
  config_flags.DEFINE_config_file("config", "configs/digits_classifier.py", "Config the model was trained with.")
  flags.DEFINE_string("workdir", "runs/digits_cfg", "Workdir with the diffusion and classifier checkpoints.")
  flags.DEFINE_list("w", ["0", "0.25", "0.5", "1", "2", "4"], "Strengths of the w methods.")
  flags.DEFINE_list("s", ["0", "1", "2", "4", "7"], "Classifier guidance scales.")
  flags.DEFINE_list("methods", ["cfg", "interval", "rescale", "apg", "autoguidance", "classifier"],
                    f"Methods: {', '.join(METHODS)}.")
  flags.DEFINE_string("guide", "", "Autoguidance's guiding model, WORKDIR[:step] (e.g. runs/digits_small).")
  flags.DEFINE_list("interval", ["0.28", "5.42"], "sigma_lo,sigma_hi of the interval method.")
  flags.DEFINE_string("sampler", "ddim:50", "The sampler run every strength uses (name:steps[:key=value]).")
  flags.DEFINE_integer("per_class", 50, "Samples per class and run.")
  flags.DEFINE_integer("seeds", 3, "Sampling seeds of each method's best point.")
  flags.DEFINE_string("out", None, "Output directory (default WORKDIR/guidance_sweep).")


def method_options(method, guide="", interval=(0.28, 5.42)):
  """(label, strength option, fixed options) of a method, with the guide and interval filled in."""
  if method not in METHODS:
    raise ValueError(f"Unknown guidance method {method!r}; valid: {', '.join(METHODS)}")
  label, key, fixed = METHODS[method]
  if method == "autoguidance" and not guide:
    raise ValueError("Method 'autoguidance' needs its guiding model: --guide=WORKDIR[:step] (e.g. a run of "
                     "configs/digits_small.py)")
  filled = {"guide": guide, "interval": tuple(float(v) for v in interval)}
  return label, key, {k: filled.get(k) if v is None else v for k, v in fixed.items()}


def plan(config, methods, ws, ss, sampler, guide="", interval=(0.28, 5.42)):
  """The runs of the sweep, each once: (label, sampler, steps, options, {method, w, s}); w = 0 of every w method is
  the one unguided run (method "unguided")."""
  (name, steps, base), = parse_runs(sampler)
  if {"w", "s"} & set(base):
    raise ValueError(f"--sampler {sampler!r} must not set w or s: the sweep sets them")
  conditional = bool(config.model.get("num_classes", 0))
  runs, labels = [], set()
  for m in methods:
    _, key, fixed = method_options(m, guide, interval)
    if not conditional and m not in ("classifier", "autoguidance"):
      raise ValueError(f"Method {m!r} needs a class-conditional model; an unconditional one sweeps: classifier, "
                       "autoguidance")
    fixed = fixed if conditional else {k: v for k, v in fixed.items() if k != "w"}  # no null label to send
    for v in (ws if key == "w" else ss):
      opts = {**base, **fixed, key: float(v)}
      extra = {"method": m, "w": opts.get("w", 0.0), "s": opts.get("s", 0.0)}
      if key == "w" and float(v) == 0:
        opts, extra = {**base, "w": 0.0}, {"method": "unguided", "w": 0.0, "s": 0.0}
      label = run_label(name, steps, opts)
      if label not in labels:
        labels.add(label)
        runs.append((label, name, steps, opts, extra))
  return runs


def curves(rows, methods):
  """{method: its points by strength}, the unguided point starting every w curve."""
  unguided = [r for r in rows if r["method"] == "unguided" and "seed" not in r]
  out = {}
  for m in methods:
    key = METHODS[m][1]
    pts = [r for r in rows if r["method"] == m and "seed" not in r] + (unguided if key == "w" else [])
    if pts:
      out[m] = sorted(pts, key=lambda r: r[key])
  return out


def best_points(rows, methods, fid):
  """{method: its row of lowest FID}."""
  return {m: min(pts, key=lambda r: r[fid]) for m, pts in curves(rows, methods).items()}


def sweep(config, workdir, out, methods, ws, ss, sampler, per_class, guide="", interval=(0.28, 5.42), seeds=1):
  runs = plan(config, methods, ws, ss, sampler, guide, interval)
  classifier = None
  if any(opts.get("s") for _, _, _, opts, _ in runs):
    classifier = load_classifier(config, workdir, parallel.mesh_for(config))
  num_classes = config.model.get("num_classes", 0) or config.classifier.model.num_classes
  by_label = {r[0]: r for r in runs}
  planned = lambda rows: [r for r in rows if r.get("base_run", r["run"]) in by_label]  # not other sweeps' points
  rows = planned(score_runs(config, workdir, out, runs, per_class * num_classes, classifier))
  names = metric_names(config.eval.features)
  best = best_points(rows, methods, names.fid)
  seeded = reseeded([by_label[r["run"]] for r in best.values()], seeds)
  if seeded:
    rows = planned(score_runs(config, workdir, out, seeded, per_class * num_classes, classifier))
  if jax.process_index() == 0:
    write_results(rows, methods, out, per_class, names)
  return rows


def strength(row):
  key = METHODS[row["method"]][1] if row["method"] in METHODS else "w"
  return f"{key} = {row[key]:g}"


def summary(rows, methods, names):
  """One row per method: its best strength, FID / IS / class accuracy mean ± std (ddof = 1) over the seeds of that
  point, the seed it was chosen on included (which biases the mean low by the choice)."""
  out = []
  unguided = next((r[names.fid] for r in rows if r["method"] == "unguided" and "seed" not in r), float("nan"))
  for m, b in best_points(rows, methods, names.fid).items():
    seeded = [b] + [r for r in rows if r.get("seed") and r.get("base_run") == b["run"]]
    stat = lambda k: np.array([r.get(k, np.nan) for r in seeded], np.float64)
    out.append({"method": m, "strength": strength({**b, "method": m}), "seeds": len(seeded),
                names.fid + "_mean": stat(names.fid).mean(),
                names.fid + "_std": stat(names.fid).std(ddof=1) if len(seeded) > 1 else 0.0,
                names.inception_score + "_mean": stat(names.inception_score).mean(),
                "class_accuracy_mean": stat("class_accuracy").mean(), "fid_unguided": unguided})
  return out


def write_results(rows, methods, out, per_class, names):
  points = [r for r in rows if "seed" not in r and r["method"] in (*methods, "unguided")]
  points = sorted(points, key=lambda r: ((list(METHODS) + ["unguided"]).index(r["method"]), r["w"], r["s"]))
  tables.write_csv(points, columns(names), os.path.join(out, "results.csv"))
  best = summary(rows, methods, names)
  tables.write_csv(best, best_columns(names), os.path.join(out, "best.csv"))
  by_method = curves(rows, methods)
  for x_key, x_label, path in ((names.inception_score, f"{names.is_label} (higher: more class-distinct)",
                                "fid_vs_is.png"),
                               ("class_accuracy", "accuracy of the evaluation classifier (samples of their class)",
                                "fid_vs_accuracy.png")):
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for m, pts in by_method.items():
      label, key, _ = METHODS[m]
      ax.plot([r.get(x_key, np.nan) for r in pts], [r[names.fid] for r in pts], "o-", label=label)
      for r in pts:
        ax.annotate(f"{r[key]:g}", (r.get(x_key, np.nan), r[names.fid]), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    ax.set(xlabel=x_label, ylabel=f"{names.fid_label} (lower: closer to the data)", yscale="log",
           title="Guidance methods, points labelled by strength")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, path), dpi=120)
    plt.close(fig)
  sampler = f"{points[0]['sampler']} with {points[0]['steps']} steps"
  intro = [f"{per_class} samples per class and run, {sampler}. {names.fid_label} and {names.is_label} use the "
           "features and probabilities of the eval.features network; class accuracy (with the digits classifier "
           "only) is scored by that clean-image classifier, never by the guiding one."]
  with open(os.path.join(out, "best.md"), "w") as f:
    f.write("\n".join([f"# Each method's best point ({sampler}; mean and std over sampling seeds)", "", *intro, "",
                        tables.markdown_table(best, best_columns(names)), "", "![FID against IS](fid_vs_is.png)",
                        "", "![FID against class accuracy](fid_vs_accuracy.png)", ""]))
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join([f"# Guidance sweep ({sampler})", "", *intro, "", tables.markdown_table(points, columns(names)),
                        "", "![FID against IS](fid_vs_is.png)", ""]))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  distributed.initialize()  # one of several processes (diffusion_jax.launch, a TPU pod, SLURM); else a no-op
  out = FLAGS.out or os.path.join(FLAGS.workdir, "guidance_sweep")
  methods = FLAGS.methods
  if "autoguidance" in methods and not FLAGS.guide:
    logging.warning("No --guide=WORKDIR[:step]: the autoguidance curve is left out")
    methods = [m for m in methods if m != "autoguidance"]
  sweep(FLAGS.config, FLAGS.workdir, out, methods, FLAGS.w, FLAGS.s, FLAGS.sampler, FLAGS.per_class, FLAGS.guide,
        FLAGS.interval, FLAGS.seeds)
  logging.info("Wrote %s", os.path.join(out, "results.md"))


if __name__ == "__main__":
  define_flags()
  app.run(main)
