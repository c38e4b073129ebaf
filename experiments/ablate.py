"""Ablations: every combination of config sweeps x seeds as a `diffusion_jax.main` run, then one table of mean ± std
over seeds per metric (FID / IS / class accuracy of each sampler run, final loss, eps loss, time) and plots.

  python -m experiments.ablate --config=configs/digits.py --out=runs/ablate \
      --sweep "training.weighting=uniform,p2,min_snr" --sweep "training.p2_gamma=0.5,1.0" --seeds 3 \
      [--set training.num_steps=600 --set sample.runs=ddim:50] [--dry_run]

An axis `--sweep "a.b+c.d=x1+y1,x2+y2"` sets keys jointly (x1 with y1, ...); axes combine as a Cartesian product.
Every key is checked and every run's config built before any run starts. Runs go sequentially here and their
commands are written to OUT/commands.sh for a cluster; finished runs (OUT/runs/NAME/results.json) are skipped, and a
failed run is recorded as failed without stopping the others. Writes OUT/runs.csv (one row per run), OUT/results.csv
and OUT/results.md (mean ± std over seeds), OUT/<metric>.png and OUT/loss_by_log_snr.png."""
import itertools
import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
from absl import app, flags, logging

from diffusion_jax import build, tables
from diffusion_jax.config_files import load_config, parse_value
from experiments.loss_by_snr import plot_loss_by_log_snr

FLAGS = flags.FLAGS
SEP = re.compile(r",(?![^()]*\))")  # commas outside parentheses separate values: "(32,64),(64,128)"


def define_flags():
  """The command-line flags (defined only when run as a script, so that experiments can be imported together)."""
  flags.DEFINE_string("config", "configs/digits.py", "Base config file (path[:argument]).")
  flags.DEFINE_string("out", None, "Results directory; runs go to OUT/runs/NAME.")
  flags.DEFINE_multi_string("sweep", [], "An axis: key=v1,v2 or key1+key2=a1+b1,a2+b2.")
  flags.DEFINE_multi_string("set", [], "key=value applied to every run (e.g. a training budget).")
  flags.DEFINE_integer("seeds", 1, "Seeds per combination: config.seed = 0 .. seeds - 1.")
  flags.DEFINE_string("mode", "all", "main.py's mode for every run (all: train, sample, eval).")
  flags.DEFINE_bool("dry_run", False, "Only check the sweep and write OUT/commands.sh.")
  flags.mark_flag_as_required("out")


def parse_axis(text):
  """'a.b+c.d=x1+y1,x2+y2' -> (['a.b', 'c.d'], [['x1', 'y1'], ['x2', 'y2']])."""
  if "=" not in text:
    raise ValueError(f"--sweep {text!r} must look like key=v1,v2 (or key1+key2=a1+b1,a2+b2)")
  keys, values = text.split("=", 1)
  keys = keys.split("+")
  points = [v.split("+") for v in SEP.split(values)]
  bad = [p for p in points if len(p) != len(keys)]
  if bad:
    raise ValueError(f"--sweep {text!r}: each value needs {len(keys)} parts joined by '+' (one per key); got {bad[0]}")
  return keys, points


def set_value(config, key, text):
  """config[key] = text parsed as the type of the existing field; unknown keys and bad values say what is valid."""
  *path, last = key.split(".")
  node = config
  for i, p in enumerate(path):
    if p not in node:
      raise KeyError(f"Config has no key {'.'.join(path[:i + 1])!r} (in {key!r}); valid: {', '.join(sorted(node))}")
    node = node[p]
  if last not in node:
    raise KeyError(f"Config has no key {key!r}; valid keys under {'.'.join(path) or 'the root'}: "
                   f"{', '.join(sorted(node))}")
  try:
    value = parse_value(text, node[last])
  except ValueError as e:
    raise ValueError(f"{key}={text!r}: {e}") from e
  node[last] = value


def plan(config_spec, sweeps, fixed, seeds, out):
  """Every run of the ablation: [{name, combo (key -> value text), seed, args}], validated before anything runs."""
  base = load_config(config_spec)
  axes = [parse_axis(s) for s in sweeps]
  fixed = [s.split("=", 1) for s in fixed]
  if any(len(f) != 2 for f in fixed):
    raise ValueError(f"--set needs key=value; got {fixed}")
  runs = []
  for point in itertools.product(*[points for _, points in axes]):
    combo = {k: v for (keys, _), values in zip(axes, point) for k, v in zip(keys, values)}
    for seed in range(seeds):
      config = base.copy_and_resolve_references()
      for key, value in [*fixed, *combo.items(), ("seed", str(seed))]:
        set_value(config, key, value)
      build.setup(config)  # names of the schedule, weighting, model, ... are valid
      name = "__".join([f"{k.split('.')[-1]}-{v}" for k, v in combo.items()] + [f"seed-{seed}"])
      name = re.sub(r"[^A-Za-z0-9_.+-]", "", name.replace(",", "+"))
      overrides = [f"--config.{k}={v}" for k, v in [*fixed, *combo.items(), ("seed", str(seed))]]
      runs.append(dict(name=name, combo=combo, seed=seed, args=[
          "-m", "diffusion_jax.main", f"--config={config_spec}", f"--workdir={os.path.join(out, 'runs', name)}",
          *overrides, f"--config.eval.cache_dir={os.path.join(out, 'cache')}"]))
  return runs


def run_subprocess(args, log_path):
  """Runs `python args...` from the current directory with its output in log_path; returns the exit code."""
  with open(log_path, "w") as log:
    return subprocess.run([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT).returncode


def write_commands(runs, out, mode="all"):
  """OUT/commands.sh: one independent command per run, for a cluster to run in parallel; returns its lines."""
  os.makedirs(out, exist_ok=True)
  lines = [shlex.join(["python", *r["args"], f"--mode={mode}"]) for r in runs]
  with open(os.path.join(out, "commands.sh"), "w") as f:
    f.write("# one line per run, independent of each other (run from the repository root)\n")
    f.writelines(line + "\n" for line in lines)
  return lines


def execute(runs, out, mode="all", runner=run_subprocess):
  """Runs each run not finished yet; returns {name: "done" | "skipped" | "failed"}."""
  write_commands(runs, out, mode)
  status = {}
  for i, r in enumerate(runs):
    workdir = os.path.join(out, "runs", r["name"])
    if os.path.exists(os.path.join(workdir, "results.json")):
      status[r["name"]] = "skipped"
      continue
    os.makedirs(workdir, exist_ok=True)
    logging.info("[%d/%d] %s", i + 1, len(runs), r["name"])
    code = runner([*r["args"], f"--mode={mode}"], os.path.join(workdir, "log.txt"))
    status[r["name"]] = "done" if code == 0 and os.path.exists(os.path.join(workdir, "results.json")) else "failed"
    if status[r["name"]] == "failed":
      logging.error("%s failed (exit code %s); its output is in %s", r["name"], code, os.path.join(workdir, "log.txt"))
  return status


def run_metrics(workdir):
  """The metrics of one finished run: per sampler run its FID / IS / class accuracy ("ddim_50/fid_digits"), the final
  logged loss and eps loss, and the training and sampling seconds."""
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  metrics = {}
  for row in results["rows"]:
    if "sampler" in row:
      for k, v in row.items():
        if k.startswith(("fid_", "is_", "class_accuracy")) and not k.endswith("_std"):
          metrics[f"{row['run']}/{k}"] = v
      metrics["sample_seconds"] = metrics.get("sample_seconds", 0.0) + row.get("seconds", 0.0)
  log_path = os.path.join(workdir, "training_log.json")
  if os.path.exists(log_path):
    with open(log_path) as f:
      last = json.load(f)["records"][-1]
    metrics.update(loss=last["loss"], eps_mse=last["eps_mse"], train_seconds=last["seconds"])
  return metrics


def aggregate(runs, out, status):
  """One row per combination: its keys, seeds done / failed, and mean and std (over seeds, ddof = 1) per metric."""
  per_run, groups = [], {}
  for r in runs:
    workdir = os.path.join(out, "runs", r["name"])
    state = status.get(r["name"]) or ("done" if os.path.exists(os.path.join(workdir, "results.json")) else "failed")
    row = dict(run=r["name"], **r["combo"], seed=r["seed"], status="failed" if state == "failed" else "done")
    if row["status"] == "done":
      row.update(run_metrics(workdir))
    per_run.append(row)
    groups.setdefault(tuple(r["combo"].items()), []).append(row)
  metric_names = sorted({k for row in per_run for k in row} - {"run", "seed", "status"} -
                        {k for r in runs for k in r["combo"]})
  rows = []
  for combo, members in groups.items():
    done = [m for m in members if m["status"] == "done"]
    row = dict(combo, seeds=len(done), failed=len(members) - len(done))
    for m in metric_names:
      values = np.array([d[m] for d in done if d.get(m) is not None], np.float64)
      if len(values):
        row[f"{m}_mean"] = float(values.mean())
        row[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    rows.append(row)
  return per_run, rows, metric_names


def write_results(runs, out, status, title="Ablation"):
  per_run, rows, metric_names = aggregate(runs, out, status)
  keys = list(runs[0]["combo"]) if runs else []
  tables.write_csv(per_run, ["run", *keys, "seed", "status", *metric_names], os.path.join(out, "runs.csv"))
  tables.write_csv(rows, [*keys, "seeds", "failed"] + [f"{m}_{s}" for m in metric_names for s in ("mean", "std")],
                   os.path.join(out, "results.csv"))
  shown = [dict({k: r[k] for k in [*keys, "seeds", "failed"]},
                **{m: f"{r[m + '_mean']:.4g} ± {r[m + '_std']:.2g}" for m in metric_names if m + "_mean" in r})
           for r in rows]
  fid_metrics = [m for m in metric_names if "/fid_" in m]
  for m in fid_metrics:
    plot_bars(rows, keys, m, os.path.join(out, f"{m.replace('/', '_')}.png"))
  labels = {", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, combo)) or "base":
            [os.path.join(out, "runs", r["name"]) for r in runs if tuple(r["combo"].values()) == combo]
            for combo in dict.fromkeys(tuple(r["combo"].values()) for r in runs)}
  plotted = plot_loss_by_log_snr({k: [d for d in v if os.path.exists(os.path.join(d, "training_log.json"))]
                                  for k, v in labels.items()}, os.path.join(out, "loss_by_log_snr.png"))
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join([
        f"# {title}", "", f"{len(runs)} runs; mean ± std over the seeds that finished (sample std, ddof = 1). "
        "Metrics per sampler run are `RUN/metric`; `loss` is the training objective and `eps_mse` the unweighted "
        "eps-equivalent loss, both averaged over the last logged interval; seconds are wall time.", "",
        tables.markdown_table(shown, [*keys, "seeds", "failed", *metric_names]), "",
        *[f"![{m}]({m.replace('/', '_')}.png)" for m in fid_metrics],
        *(["", "![loss by log-SNR](loss_by_log_snr.png)"] if plotted else []), ""]))
  return rows


def plot_bars(rows, keys, metric, path):
  import matplotlib.pyplot as plt
  present = [r for r in rows if metric + "_mean" in r]
  if not present:
    return
  fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(present)), 3.6))
  labels = ["\n".join(f"{k.split('.')[-1]}={r[k]}" for k in keys) or "base" for r in present]
  ax.bar(range(len(present)), [r[metric + "_mean"] for r in present], yerr=[r[metric + "_std"] for r in present],
         capsize=4, color="tab:blue", alpha=0.8)
  ax.set_xticks(range(len(present)), labels, fontsize=7)
  ax.set(ylabel=metric, title=f"{metric} (mean ± std over seeds)")
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runs = plan(FLAGS.config, FLAGS.sweep, FLAGS.set, FLAGS.seeds, FLAGS.out)
  if FLAGS.dry_run:
    print("\n".join(write_commands(runs, FLAGS.out, FLAGS.mode)))
    return
  status = execute(runs, FLAGS.out, FLAGS.mode)
  write_results(runs, FLAGS.out, status)
  logging.info("Wrote %s", os.path.join(FLAGS.out, "results.md"))


if __name__ == "__main__":
  define_flags()
  app.run(main)
