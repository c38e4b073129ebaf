"""Command line: python -m diffusion_jax.main --config=configs/digits.py --workdir=runs/x
--mode=train|sample|eval|all|train_classifier|train_autoencoder [--config.training.num_steps=2000 ...].

Exit status: 0 done; 1 an error, printed in one or two lines (the full trace with --verbosity=1 or
DIFFUSION_JAX_TRACEBACK=1); 75 stopped by SIGTERM / SIGINT with a checkpoint saved (run the same command to resume);
128 + signal when the checkpoint could not be written within job.grace_s."""
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from diffusion_jax import (distributed, evaluate, parallel, preemption, registry, sample, train,
                           train_autoencoder, train_classifier, workdir_lock)
from diffusion_jax.cli_errors import short_errors
from diffusion_jax import build

MODES = ("train", "sample", "eval", "all", "train_classifier", "train_autoencoder")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples and reports.")
_MODE = flags.DEFINE_string("mode", "all", f"One of {', '.join(MODES)}.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir, mode):
  """Runs `mode` on the workdir, which it holds for the duration (workdir_lock); the sampling settings are checked
  before anything trains or compiles."""
  if mode not in MODES:
    raise ValueError(f"Unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
  registry.import_modules(config.imports)
  if mode in ("sample", "eval", "all"):
    sample.check_sampling(config, build.setup(config)[1], workdir)
  os.makedirs(workdir, exist_ok=True)
  with workdir_lock.hold(workdir, config.job.lock_stale_s, mode):
    return _run(config, workdir, mode)


def _run(config, workdir, mode):
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1))
  mesh = parallel.mesh_for(config)
  if mode == "train_classifier":
    return train_classifier.train_classifier(config, workdir, mesh)
  if mode == "train_autoencoder":
    return train_autoencoder.train_autoencoder(config, workdir, mesh)
  if mode in ("train", "all"):
    state = train.train(config, workdir, mesh)
    params = state.ema_params if config.sample.use_ema else state.params
  if mode in ("sample", "all"):
    model, process = build.setup(config)
    if mode == "sample":
      params = build.load_params(config, workdir, mesh)
    sample.sample(config, workdir, params, model, process, mesh)
  if mode in ("eval", "all"):
    results = evaluate.evaluate(config, workdir, params if mode == "all" else None, mesh)
    logging.info("Wrote %s", os.path.join(workdir, "report.md"))
    return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  distributed.initialize()  # one of several processes (diffusion_jax.launch, a TPU pod, SLURM); else a no-op
  try:
    with short_errors():
      run(_CONFIG.value, _WORKDIR.value, _MODE.value)
  except preemption.Preempted as e:
    logging.warning("%s", e)
    sys.exit(preemption.EXIT_CODE)


def cli():
  """The `diffusion-jax` console script (pyproject.toml): the same as python -m diffusion_jax.main."""
  app.run(main)


if __name__ == "__main__":
  cli()
