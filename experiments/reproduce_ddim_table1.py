"""Reproduces Table 1 of DDIM (Song et al. 2020), CIFAR-10 column: FID of Ho et al.'s DDPM checkpoint sampled by
DDIM with S steps and stochasticity eta, beside the published values.

  python -m diffusion_jax.convert --from=diffusers --src=ddpm-cifar10-32 --dst=runs/ddpm_cifar10
  python -m experiments.reproduce_ddim_table1 --workdir=runs/ddpm_cifar10 \\
      --inception_weights=pt_inception-2015-12-05-6726825d.pth --reference_stats=fid_stats_cifar10_train.npz

As in the paper: 50,000 samples per cell, DDIM's quadratic time grid for S < 1000 (the full chain at S = 1000), no
clipping of x0, FID against the training set. --smoke runs the same pipeline on a handful of samples of any
checkpoint (e.g. random weights) to check it end to end; its table is labelled a smoke test and its numbers mean
nothing."""
import os

import jax
from absl import app, flags, logging

from diffusion_jax import distributed, tables
from diffusion_jax.config_files import load_config
from experiments.scoring import score_runs

# Song et al. 2020, Table 1, CIFAR-10 (32x32): FID by eta (rows) and S (columns)
PUBLISHED = {0.0: {10: 13.36, 20: 6.84, 50: 4.67, 100: 4.16, 1000: 4.04},
             0.2: {10: 14.04, 20: 7.11, 50: 4.77, 100: 4.25, 1000: 4.09},
             0.5: {10: 16.66, 20: 8.35, 50: 5.25, 100: 4.46, 1000: 4.29},
             1.0: {10: 41.07, 20: 18.36, 50: 8.01, 100: 5.78, 1000: 4.73}}
SMOKE = ("SMOKE TEST: {n} samples per cell from the checkpoint in {wd}; the pipeline ran end to end, but these FIDs "
         "are not comparable with the paper's (which needs the released weights, the real Inception weights and "
         "50,000 samples).")


def runs(config, steps, etas):
  """One DDIM run per (S, eta): DDIM's quadratic grid below the full chain, its full chain at S = T."""
  out = []
  for eta in etas:
    for s in steps:
      spacing = "leading" if s == config.diffusion.num_timesteps else "quadratic"
      out.append((f"ddim_{s}_eta{eta:g}", "ddim", s, {"eta": eta, "spacing": spacing},
                  {"S": s, "eta": eta, "published_fid": PUBLISHED.get(eta, {}).get(s)}))
  return out


def reproduce(config, workdir, out, steps, etas, num_samples, smoke=False):
  """Scores every (S, eta) cell (resumable: finished cells are kept in OUT/rows.json); writes OUT/results.md / .csv."""
  with config.unlocked():
    config.sample.clip_x0 = False  # DDIM's sampler does not clip x0
  rows = score_runs(config, workdir, out, runs(config, steps, etas), num_samples)
  if jax.process_index() == 0:
    write_results(rows, out, steps, etas, SMOKE.format(n=num_samples, wd=workdir) if smoke else "")
  return rows


def write_results(rows, out, steps, etas, smoke_note):
  fid = "fid_inception"
  tables.write_csv(rows, ["run", "S", "eta", "nfe", fid, "published_fid", "num_samples", "seconds"],
                   os.path.join(out, "results.csv"))
  cell = {(r["S"], r["eta"]): r for r in rows}
  grid = [dict(eta=eta, **{f"S={s}": "{} ({})".format(cell[(s, eta)][fid] if (s, eta) in cell else "-",
                                                       PUBLISHED.get(eta, {}).get(s, "-")) for s in steps})
          for eta in etas]
  lines = ["# DDIM Table 1, CIFAR-10: FID ours (published)", ""]
  lines += [f"**{smoke_note}**", ""] if smoke_note else []
  lines += [tables.markdown_table(grid, ["eta"] + [f"S={s}" for s in steps]), "",
            "Published: Song et al. 2020, Table 1 (50,000 samples, training-set statistics). Ours: "
            f"{rows[0]['num_samples'] if rows else 0} samples per cell.", ""]
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join(lines))


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string("workdir", None, "A converted ddpm-cifar10-32 (python -m diffusion_jax.convert): config.py + "
                      "checkpoints/.")
  flags.DEFINE_string("out", None, "Output directory (default WORKDIR/ddim_table1).")
  flags.DEFINE_list("steps", ["10", "20", "50", "100", "1000"], "DDIM step counts S.")
  flags.DEFINE_list("etas", ["0", "0.2", "0.5", "1"], "DDIM stochasticity values eta.")
  flags.DEFINE_integer("num_samples", 50000, "Samples per cell (the paper: 50,000).")
  flags.DEFINE_integer("batch_size", 500, "Samples per sampling batch.")
  flags.DEFINE_string("inception_weights", "", "pytorch-fid's Inception weights (else $FID_INCEPTION_WEIGHTS).")
  flags.DEFINE_string("reference_stats", "", "CIFAR-10 training-set statistics (.npz: mu, sigma); computed from TFDS "
                      "cifar10 and cached when empty.")
  flags.DEFINE_bool("smoke", False, "Label the table a smoke test (any checkpoint, a handful of samples).")
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  distributed.initialize()
  config = load_config(os.path.join(FLAGS.workdir, "config.py"))
  config.sample.batch_size = FLAGS.batch_size
  config.eval.inception_weights = FLAGS.inception_weights
  config.eval.reference_stats = FLAGS.reference_stats
  out = FLAGS.out or os.path.join(FLAGS.workdir, "ddim_table1")
  reproduce(config, FLAGS.workdir, out, [int(s) for s in FLAGS.steps], [float(e) for e in FLAGS.etas],
            FLAGS.num_samples, FLAGS.smoke)
  logging.info("Wrote %s", os.path.join(out, "results.md"))


if __name__ == "__main__":
  define_flags()
  app.run(main)
