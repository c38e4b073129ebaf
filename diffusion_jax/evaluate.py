"""Scores every sampler run of the workdir with FID-digits / IS-digits and class accuracy, plus reference rows
(held-out real digits, Gaussian noise), and writes results.json and report.md."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import parallel
from diffusion_jax.data import get_dataset
from diffusion_jax.evaluation import digits_classifier, metrics
from diffusion_jax.likelihood import bits_per_dim
from diffusion_jax.sample import sampler_setup, sampling_sde
from diffusion_jax.tables import markdown_table, pivot_by_nfe, plot_by_nfe

COLUMNS = ("run", "sampler", "steps", "nfe", "fid_digits", "is_digits", "is_digits_std", "class_accuracy", "seconds")


def digits_scorer(config, workdir):
  """(score(images, labels) -> FID-digits / IS-digits / class-accuracy row, evaluation classifier's held-out
  accuracy); the classifier is trained once and cached in the workdir."""
  if config.data.name != "digits":
    raise ValueError(f"Scoring uses the digits classifier, which needs data.name='digits' "
                     f"(got {config.data.name!r}); Inception FID/IS for other datasets comes with evaluation/inception")
  clf, acc = digits_classifier.load_or_train(config.data, workdir, config.eval.classifier_steps)
  _, ref = digits_classifier.apply(clf, get_dataset(config, "train").images)
  return (lambda images, labels: score(clf, ref, images, labels)), acc


def score(params, ref_features, images, labels):
  probs, feats = digits_classifier.apply(params, images)
  is_mean, is_std = metrics.inception_score(probs)
  row = dict(fid_digits=round(metrics.fid_from_features(ref_features, feats), 3), is_digits=round(is_mean, 3),
             is_digits_std=round(is_std, 3))
  if labels is not None and len(labels):
    row["class_accuracy"] = round(float(np.mean(np.argmax(probs, -1) == labels)), 4)
  return row


def held_out_bpd(config, workdir, params, mesh):
  """Bits/dim of the first eval.bpd_num_images held-out images (mean, standard error, mean NFE)."""
  from diffusion_jax import train
  model, process = train.setup(config)
  params = train.load_params(config, workdir, mesh) if params is None else params
  held = get_dataset(config, "eval")
  x = jnp.asarray(held.images[:config.eval.bpd_num_images])
  y = jnp.asarray(held.labels[:config.eval.bpd_num_images]) if config.model.num_classes else None
  sde = sampling_sde(config)
  fn = jax.jit(lambda p, x, y, rng: bits_per_dim(sampler_setup(config, model, p, process, "ode")[0], sde, x, rng, y=y,
                                                 prediction=config.diffusion.prediction,
                                                 num_bins=config.eval.bpd_num_bins, probe=config.eval.bpd_probe))
  bpd, nfe = fn(params, x, y, jax.random.PRNGKey(config.seed + 3))
  bpd = np.asarray(bpd, np.float64)
  return dict(bpd=round(float(bpd.mean()), 4), bpd_stderr=round(float(bpd.std() / np.sqrt(len(bpd))), 4),
              nfe=int(nfe), num_images=len(bpd), sde=config.diffusion.sde or "vp", conditional=y is not None)


def evaluate(config, workdir, params=None, mesh=None):
  """Scores the workdir's sample runs; `params` (the diffusion model's, loaded when None) serve the likelihood."""
  runs_path = os.path.join(workdir, "samples", "runs.json")
  if not os.path.exists(runs_path):
    raise FileNotFoundError(f"No samples in {os.path.dirname(runs_path)}; run --mode=sample first")
  scorer, acc = digits_scorer(config, workdir)
  held = get_dataset(config, "eval")
  rows = [dict(run="real held-out digits", **scorer(held.images, held.labels))]
  noise = np.clip(np.random.default_rng(config.seed).standard_normal((config.sample.num_samples,) + held.images.shape[1:]),
                  -1, 1).astype(np.float32)
  rows.append(dict(run="gaussian noise", **scorer(noise, None)))
  with open(runs_path) as f:
    runs = json.load(f)
  for r in runs:
    data = np.load(os.path.join(workdir, "samples", f"{r['run']}.npz"))
    rows.append({**r, **scorer(data["images"], data["labels"])})
  results = dict(classifier_heldout_accuracy=acc, rows=rows)
  if config.eval.enable_bpd:
    results["likelihood"] = held_out_bpd(config, workdir, params, mesh or parallel.make_mesh())
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  write_report(workdir, results, runs)
  return results


def write_report(workdir, results, runs):
  lines = ["# diffusion_jax report", "",
           f"Evaluation classifier held-out accuracy: {results['classifier_heldout_accuracy']:.4f}. "
           "FID-digits is computed on its 128-d penultimate features against the training split; IS-digits on its "
           "softmax (10 splits); class accuracy is the share of conditional samples classified as their label.", "",
           markdown_table(results["rows"], COLUMNS), ""]
  options = {k for r in runs for k in r} - set(COLUMNS) - {"num_samples", "nonfinite_fraction"}
  table, curves = pivot_by_nfe([r for r in results["rows"] if "sampler" in r], "fid_digits", options)
  plot_by_nfe(curves, "FID-digits", os.path.join(workdir, "fid_vs_nfe.png"), "FID-digits against NFE")
  lines += ["## FID-digits against network evaluations", "", table, "", "![FID against NFE](fid_vs_nfe.png)", ""]
  if "likelihood" in results:
    lk = results["likelihood"]
    lines += [f"Likelihood ({lk['sde']} probability-flow ODE, {lk['num_images']} held-out images, "
              f"{'class-conditional' if lk['conditional'] else 'unconditional'}): "
              f"{lk['bpd']:.3f} ± {lk['bpd_stderr']:.3f} bits/dim, {lk['nfe']} network evaluations.", ""]
  for r in runs:
    lines += [f"## {r['run']}", "", f"![{r['run']}](samples/{r['run']}.png)", ""]
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(lines))
