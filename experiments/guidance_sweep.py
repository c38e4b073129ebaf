"""Classifier-free guidance against classifier guidance on one trained model: a sweep of each method's strength with
one sampler, scored by FID and IS with the network of config.eval.features and, with the digits classifier, by the
accuracy of the samples' labels (a clean-image classifier, never the guiding one). Writes results.csv, results.md and
fid_vs_is.png (both methods' FID-IS curves on one figure).
Resumable: finished runs are kept in OUT/rows.json and skipped.

  python -m experiments.guidance_sweep --config=configs/digits_classifier.py --workdir=runs/digits_cfg
      [--w=0,0.5,1,2,4,7,10] [--s=0,0.5,1,2,4,7,10] [--methods=cfg,classifier] [--sampler=ddim:50] [--per_class=50]

Methods: `cfg` is classifier-free guidance, eps(x, y) + w (eps(x, y) - eps(x, null)); `classifier` is classifier
guidance of the model's unconditional mode (w = -1, the null label; an unconditional model as it is) with scale s;
`cond_classifier` is classifier guidance of the conditional model (w = 0), as in Dhariwal & Nichol's Table 4."""
import os

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from absl import app, flags, logging
from ml_collections import config_flags

from diffusion_jax import distributed, parallel, tables
from diffusion_jax.evaluation.features import metric_names
from diffusion_jax.sample import run_label
from diffusion_jax.samplers import parse_runs
from diffusion_jax.build import load_classifier
from experiments.scoring import score_runs

# method -> (label, strength option, fixed options)
METHODS = {
    "cfg": ("classifier-free (w)", "w", {}),
    "classifier": ("classifier, unconditional model (s)", "s", {"w": -1.0}),
    "cond_classifier": ("classifier, conditional model (s)", "s", {}),
}


def columns(names):
  return ("method", "w", "s", names.fid, names.inception_score, names.inception_score_std, "class_accuracy",
          "num_samples", "nfe", "seconds", "run")


FLAGS = flags.FLAGS


def define_flags():
  """The command-line flags (defined only when run as a script, so that experiments can be imported together)."""
  config_flags.DEFINE_config_file("config", "configs/digits_classifier.py", "Config the model was trained with.")
  flags.DEFINE_string("workdir", "runs/digits_cfg", "Workdir with the diffusion and classifier checkpoints.")
  flags.DEFINE_list("w", ["0", "0.5", "1", "2", "4", "7", "10"], "Classifier-free guidance strengths.")
  flags.DEFINE_list("s", ["0", "0.5", "1", "2", "4", "7", "10"], "Classifier guidance scales.")
  flags.DEFINE_list("methods", ["cfg", "classifier"], f"Methods: {', '.join(METHODS)}.")
  flags.DEFINE_string("sampler", "ddim:50", "The sampler run every strength uses (name:steps[:key=value]).")
  flags.DEFINE_integer("per_class", 50, "Samples per class and run.")
  flags.DEFINE_string("out", None, "Output directory (default WORKDIR/guidance_sweep).")


def plan(config, methods, ws, ss, sampler):
  """The runs of the sweep: (label, sampler, steps, options, {method, w, s})."""
  unknown = set(methods) - set(METHODS)
  if unknown:
    raise ValueError(f"Unknown guidance methods {sorted(unknown)}; valid: {', '.join(METHODS)}")
  (name, steps, base), = parse_runs(sampler)
  if {"w", "s"} & set(base):
    raise ValueError(f"--sampler {sampler!r} must not set w or s: the sweep sets them")
  conditional = bool(config.model.get("num_classes", 0))
  runs = []
  for m in methods:
    _, key, fixed = METHODS[m]
    if not conditional and (m != "classifier"):
      raise ValueError(f"Method {m!r} needs a class-conditional model; an unconditional one sweeps: classifier")
    fixed = fixed if conditional else {}
    for v in (ws if key == "w" else ss):
      opts = {**base, **fixed, key: float(v)}
      runs.append((run_label(name, steps, opts), name, steps, opts,
                   {"method": m, "w": opts.get("w", 0.0), "s": opts.get("s", 0.0)}))
  return runs


def sweep(config, workdir, out, methods, ws, ss, sampler, per_class):
  runs = plan(config, methods, ws, ss, sampler)
  classifier = None
  if any(opts.get("s") for _, _, _, opts, _ in runs):
    classifier = load_classifier(config, workdir, parallel.mesh_for(config))
  num_classes = config.model.get("num_classes", 0) or config.classifier.model.num_classes
  rows = score_runs(config, workdir, out, runs, per_class * num_classes, classifier)
  if jax.process_index() == 0:
    write_results([r for r in rows if r["method"] in methods], out, per_class, metric_names(config.eval.features))
  return rows


def write_results(rows, out, per_class, names):
  rows = sorted(rows, key=lambda r: (list(METHODS).index(r["method"]), r["w"], r["s"]))
  tables.write_csv(rows, columns(names), os.path.join(out, "results.csv"))
  fig, (ax, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
  for m in METHODS:
    pts = [r for r in rows if r["method"] == m]
    if not pts:
      continue
    label, key, _ = METHODS[m]
    ax.plot([r[names.inception_score] for r in pts], [r[names.fid] for r in pts], "o-", label=label)
    for r in pts:
      ax.annotate(f"{r[key]:g}", (r[names.inception_score], r[names.fid]), textcoords="offset points", xytext=(4, 4),
                  fontsize=7)
    ax_acc.plot([r[key] for r in pts], [r.get("class_accuracy", float("nan")) for r in pts], "o-", label=label)
  ax.set(xlabel=f"{names.is_label} (higher: more class-distinct)",
         ylabel=f"{names.fid_label} (lower: closer to the data)",
         yscale="log", title="FID-IS trade-off (points labelled by strength)")
  ax_acc.set(xlabel="guidance strength (w or s)", ylabel="accuracy of the evaluation classifier",
             title="Samples of the requested class")
  for a in (ax, ax_acc):
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "fid_vs_is.png"), dpi=120)
  plt.close(fig)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join([
        f"# Guidance sweep ({per_class} samples per class and run, {rows[0]['sampler']} with "
        f"{rows[0]['steps']} steps)", "",
        f"{names.fid_label} and {names.is_label} use the features and probabilities of the eval.features network; "
        "class accuracy (with the digits classifier only) is scored by that clean-image classifier, never by the "
        "guiding one, a separate noise-conditional network.", "",
        tables.markdown_table(rows, columns(names)), "", "![FID against IS](fid_vs_is.png)", ""]))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  distributed.initialize()  # one of several processes (diffusion_jax.launch, a TPU pod, SLURM); else a no-op
  out = FLAGS.out or os.path.join(FLAGS.workdir, "guidance_sweep")
  sweep(FLAGS.config, FLAGS.workdir, out, FLAGS.methods, FLAGS.w, FLAGS.s, FLAGS.sampler, FLAGS.per_class)
  logging.info("Wrote %s", os.path.join(out, "results.md"))


if __name__ == "__main__":
  define_flags()
  app.run(main)
