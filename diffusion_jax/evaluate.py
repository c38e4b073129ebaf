"""Scores every sampler run of the workdir with FID-digits / IS-digits and class accuracy, plus reference rows
(held-out real digits, Gaussian noise), and writes results.json and report.md."""
import json
import os

import numpy as np

from diffusion_jax.data import get_dataset
from diffusion_jax.evaluation import digits_classifier, metrics

COLUMNS = ("run", "sampler", "steps", "nfe", "fid_digits", "is_digits", "is_digits_std", "class_accuracy", "seconds")


def score(params, ref_features, images, labels):
  probs, feats = digits_classifier.apply(params, images)
  is_mean, is_std = metrics.inception_score(probs)
  row = dict(fid_digits=round(metrics.fid_from_features(ref_features, feats), 3), is_digits=round(is_mean, 3),
             is_digits_std=round(is_std, 3))
  if labels is not None and len(labels):
    row["class_accuracy"] = round(float(np.mean(np.argmax(probs, -1) == labels)), 4)
  return row


def evaluate(config, workdir):
  if config.data.name != "digits":
    raise ValueError(f"--mode=eval scores with the digits classifier, which needs data.name='digits' "
                     f"(got {config.data.name!r}); Inception FID/IS for other datasets comes with evaluation/inception")
  runs_path = os.path.join(workdir, "samples", "runs.json")
  if not os.path.exists(runs_path):
    raise FileNotFoundError(f"No samples in {os.path.dirname(runs_path)}; run --mode=sample first")
  params, acc = digits_classifier.load_or_train(config.data, workdir, config.eval.classifier_steps)
  train, held = get_dataset(config, "train"), get_dataset(config, "eval")
  _, ref = digits_classifier.apply(params, train.images)
  rows = [dict(run="real held-out digits", **score(params, ref, held.images, held.labels))]
  noise = np.clip(np.random.default_rng(config.seed).standard_normal((config.sample.num_samples,) + train.images.shape[1:]),
                  -1, 1).astype(np.float32)
  rows.append(dict(run="gaussian noise", **score(params, ref, noise, None)))
  with open(runs_path) as f:
    runs = json.load(f)
  for r in runs:
    data = np.load(os.path.join(workdir, "samples", f"{r['run']}.npz"))
    rows.append({**r, **score(params, ref, data["images"], data["labels"])})
  results = dict(classifier_heldout_accuracy=acc, rows=rows)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  write_report(workdir, results, runs)
  return results


def markdown_table(rows, columns):
  fmt = lambda v: "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def write_report(workdir, results, runs):
  lines = ["# diffusion_jax report", "",
           f"Evaluation classifier held-out accuracy: {results['classifier_heldout_accuracy']:.4f}. "
           "FID-digits is computed on its 128-d penultimate features against the training split; IS-digits on its "
           "softmax (10 splits); class accuracy is the share of conditional samples classified as their label.", "",
           markdown_table(results["rows"], COLUMNS), ""]
  for r in runs:
    lines += [f"## {r['run']}", "", f"![{r['run']}](samples/{r['run']}.png)", ""]
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(lines))
