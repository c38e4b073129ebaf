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


def reseeded(runs, seeds):
  """The runs again under sampling seeds 1 .. seeds - 1: [(label_seedK, sampler, steps, options, extra + {seed: K,
  base_run: label})], each run once (several plans may share one)."""
  unique = list({r[0]: r for r in runs}.values())
  return [(f"{label}_seed{k}", name, steps, opts, {**extra, "seed": k, "base_run": label})
          for k in range(1, seeds) for label, name, steps, opts, extra in unique]


def score_runs(config, workdir, out, runs, num_samples, classifier=None):
  """runs: [(label, sampler, steps, options, extra row fields)], each sampled from the key config.seed + 1 + its
  extra field `seed` (0 if absent). Returns every row of OUT/rows.json. A run that fails (a ValueError: a step count
  the sampler does not take, samples that diverged to NaN) is logged and skipped."""
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
      rng = jax.random.PRNGKey(config.seed + 1 + extra.get("seed", 0))
      row = score_sampler_run(config, scorer, model, process, params, mesh, name, steps, num_samples, rng, classifier,
                              latents=latents, **opts)
    except ValueError as e:
      logging.warning("skipping %s: %s", label, e)
      continue
    rows.append(json.loads(json.dumps({"run": label, **row, **extra})))  # as rows.json gives it back (lists)
    if jax.process_index() == 0:  # every process of a multi-process job has the same rows
      with open(rows_path + ".tmp", "w") as f:
        json.dump(rows, f, indent=1)
      os.replace(rows_path + ".tmp", rows_path)
  return rows
