"""Samples and scores a list of sampler runs on one trained model (FID-digits / IS-digits / class accuracy by the
evaluation classifier, wall time), resumably: finished runs are kept in OUT/rows.json and skipped."""
import json
import os

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from diffusion_jax import parallel, train
from diffusion_jax.evaluate import digits_scorer
from diffusion_jax.sample import generate_samples


def score_runs(config, workdir, out, runs, num_samples, classifier=None):
  """runs: [(label, sampler, steps, options, extra row fields)]. Returns every row of OUT/rows.json. A run the model
  cannot take (a ValueError while sampling) is logged and skipped."""
  mesh = parallel.make_mesh()
  model, process = train.setup(config)
  params = train.load_params(config, workdir, mesh)
  scorer, _ = digits_scorer(config, workdir)
  os.makedirs(out, exist_ok=True)
  rows_path = os.path.join(out, "rows.json")
  rows = json.load(open(rows_path)) if os.path.exists(rows_path) else []
  done = {r["run"] for r in rows}
  for label, name, steps, opts, extra in tqdm([r for r in runs if r[0] not in done], desc="sampler runs"):
    try:
      images, labels, seconds, nfe = generate_samples(config, model, process, params, mesh, name, steps, num_samples,
                                                      jax.random.PRNGKey(config.seed + 1), classifier, **opts)
    except ValueError as e:  # e.g. a step count the sampler does not support (PC-Langevin on VP below 21 steps)
      logging.warning("skipping %s: %s", label, e)
      continue
    bad = float((~np.isfinite(images).all(axis=(1, 2, 3))).mean())
    rows.append(dict(run=label, sampler=name, steps=steps, nfe=int(round(nfe)), seconds=round(seconds, 2),
                     nonfinite_fraction=bad, **{**opts, **extra}, **scorer(images, labels)))
    with open(rows_path + ".tmp", "w") as f:
      json.dump(rows, f, indent=1)
    os.replace(rows_path + ".tmp", rows_path)
  return rows
