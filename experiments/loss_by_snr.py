"""Where a run's capacity goes: the unweighted eps-equivalent training loss in log-SNR bins (from each workdir's
training_log.json), several runs on one figure; runs with the same label are averaged (a band shows their spread).
With --weighting_out, also the runs' effective weightings w(log SNR) (each workdir's weighting.json) on one figure.

  python -m experiments.loss_by_snr runs/a runs/b [--labels=uniform,p2] [--out=loss_by_log_snr.png] [--last=0.25]
      [--weighting_out=weighting.png]"""
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from diffusion_jax.tables import plot_weightings  # noqa: E402


def loss_by_log_snr(workdir, last=0.25):
  """(bin centres, per-bin loss averaged over the last `last` fraction of the logged intervals) of one run."""
  with open(os.path.join(workdir, "training_log.json")) as f:
    log = json.load(f)
  edges = np.asarray(log["log_snr_edges"])
  records = log["records"][-max(1, int(round(last * len(log["records"])))):]
  bins = np.array([[np.nan if v is None else v for v in r["loss_by_log_snr"]] for r in records], np.float64)
  return 0.5 * (edges[:-1] + edges[1:]), nanmean(bins)


def nanmean(a):
  """Mean over axis 0 ignoring NaN (bins without examples); NaN where a column has no value, without a warning."""
  count = np.sum(~np.isnan(a), axis=0)
  return np.where(count > 0, np.nansum(a, axis=0) / np.maximum(count, 1), np.nan)


def plot_loss_by_log_snr(runs, path, last=0.25):
  """runs: {label: [workdirs]} -> one line per label (mean over its workdirs, min-max band);
  False if nothing to plot."""
  runs = {k: v for k, v in runs.items() if v}
  if not runs:
    return False
  fig, (ax, ax_rel) = plt.subplots(1, 2, figsize=(11, 4.2))
  curves = {label: [loss_by_log_snr(d, last) for d in dirs] for label, dirs in runs.items()}
  reference = nanmean(np.array([c[1] for c in next(iter(curves.values()))]))
  for label, cs in curves.items():
    x, ys = cs[0][0], np.array([c[1] for c in cs])
    mean = nanmean(ys)
    line, = ax.plot(x, mean, "o-", label=label, ms=3)
    ax_rel.plot(x, mean / reference, "o-", label=label, ms=3, color=line.get_color())
    if len(ys) > 1:
      ax.fill_between(x, np.nanmin(ys, axis=0), np.nanmax(ys, axis=0), alpha=0.15, color=line.get_color())
  ax.set(xlabel="log SNR (left: noisy, coarse content; right: clean, fine detail)", ylabel="eps-equivalent loss",
         yscale="log", title="Training loss by noise level")
  ax_rel.set(xlabel="log SNR", ylabel=f"relative to {next(iter(curves))}", title="Relative to the first run")
  for a in (ax, ax_rel):
    a.grid(alpha=0.3)
    a.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def effective_weighting(workdir):
  """(log_snr, normalised w) of one run, from its weighting.json (written when its training starts)."""
  with open(os.path.join(workdir, "weighting.json")) as f:
    d = json.load(f)
  return np.asarray(d["log_snr"]), np.asarray(d["weighting"])


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_list("labels", None, "One label per workdir (default: the directory names).")
  flags.DEFINE_string("out", "loss_by_log_snr.png", "Output PNG.")
  flags.DEFINE_float("last", 0.25, "Fraction of the last logged intervals to average.")
  flags.DEFINE_string("weighting_out", "", "Also write the runs' effective weightings to this PNG.")

  def main(argv):
    dirs = argv[1:]
    labels = flags.FLAGS.labels or [os.path.basename(os.path.normpath(d)) for d in dirs]
    if len(labels) != len(dirs):
      raise app.UsageError(f"{len(labels)} labels for {len(dirs)} workdirs")
    runs = {}
    for label, d in zip(labels, dirs):
      runs.setdefault(label, []).append(d)
    plot_loss_by_log_snr(runs, flags.FLAGS.out, flags.FLAGS.last)
    print(f"Wrote {flags.FLAGS.out}")
    if flags.FLAGS.weighting_out:
      plot_weightings({label: effective_weighting(dirs[0]) for label, dirs in runs.items()}, flags.FLAGS.weighting_out)
      print(f"Wrote {flags.FLAGS.weighting_out}")
  app.run(main)
