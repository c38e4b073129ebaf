"""Samples and scores a list of sampler runs on one trained model (FID / IS / class accuracy by the feature network
of config.eval.features, wall time), streaming each run's samples into the metrics, resumably: finished runs are kept
in OUT/rows.json and skipped."""
import json
import os

import jax
from absl import logging
from tqdm import tqdm

from diffusion_jax import build, parallel
from diffusion_jax.evaluate import score_sampler_run
from diffusion_jax.evaluation.features import Scorer


def score_runs(config, workdir, out, runs, num_samples, classifier=None):
  """runs: [(label, sampler, steps, options, extra row fields)]. Returns every row of OUT/rows.json. A run that
  fails (a ValueError: a step count the sampler does not take, samples that diverged to NaN) is logged and skipped."""
  mesh = parallel.mesh_for(config)
  model, process = build.setup(config)
  params = build.load_params(config, workdir, mesh)
  latents = build.load_latents(config, workdir, mesh)
  scorer = Scorer(config, workdir, mesh)
  os.makedirs(out, exist_ok=True)
  rows_path = os.path.join(out, "rows.json")
  rows = json.load(open(rows_path)) if os.path.exists(rows_path) else []
  done = {r["run"] for r in rows}
  for label, name, steps, opts, extra in tqdm([r for r in runs if r[0] not in done], desc="sampler runs"):
    try:
      row = score_sampler_run(config, scorer, model, process, params, mesh, name, steps, num_samples,
                              jax.random.PRNGKey(config.seed + 1), classifier, latents=latents, **opts)
    except ValueError as e:
      logging.warning("skipping %s: %s", label, e)
      continue
    rows.append({"run": label, **row, **extra})
    if jax.process_index() == 0:  # every process of a multi-process job has the same rows
      with open(rows_path + ".tmp", "w") as f:
        json.dump(rows, f, indent=1)
      os.replace(rows_path + ".tmp", rows_path)
  return rows
