"""Scores the sampler runs of config.sample.runs by FID / IS (and class accuracy) with the feature network of
config.eval.features, beside reference rows (held-out real images, Gaussian noise); writes results.json and report.md.
Runs that --mode=sample saved are read from WORKDIR/samples; the others stream from the sampler, nothing stored."""
import json
import os

import jax
import numpy as np

from diffusion_jax import build, latent, parallel, text
from diffusion_jax.data import get_dataset
from diffusion_jax.evaluation.features import Scorer, is_score_field
from diffusion_jax.images import save_grid
from diffusion_jax.likelihood import bits_per_dim
from diffusion_jax.samplers import parse_runs
from diffusion_jax.sample import needs_classifier, run_label, sample_batches, sampler_setup, sampling_sde
from diffusion_jax.tables import markdown_table, pivot_by_nfe, plot_by_nfe
from diffusion_jax.build import load_classifier


def columns(metric_columns):
  """The report's columns around the metric columns of the feature networks (Scorer.columns)."""
  return ("run", "sampler", "steps", "nfe", *metric_columns, "num_samples", "seconds", "references")


def score_sampler_run(config, scorer, model, process, params, mesh, name, steps, num, rng, classifier=None,
                      grid_path=None, latents=None, **kwargs):
  """Streams `num` samples of one sampler run through the scorer: a row of metrics, seconds (sampling only, compiled)
  and mean NFE; the first 100 samples go to grid_path as a PNG when given."""
  acc, seconds, nfes = scorer.stream(), 0.0, []
  for b, (images, labels, secs, nfe) in enumerate(sample_batches(config, model, process, params, mesh, name, steps,
                                                                 num, rng, classifier, latents, **kwargs)):
    if b == 0 and grid_path and jax.process_index() == 0:
      save_grid(images[:100], grid_path)
    acc.add(images, labels)
    seconds, nfes = seconds + secs, nfes + [nfe]
  return dict(sampler=name, steps=steps, nfe=int(round(np.mean(nfes))), seconds=round(seconds, 2), **kwargs,
              **acc.row())


def held_out_bpd(config, workdir, params, mesh):
  """Bits/dim of the first eval.bpd_num_images held-out images (mean, standard error, mean NFE)."""
  model, process = build.setup(config)
  params = build.load_params(config, workdir, mesh) if params is None else params
  held = get_dataset(config, "eval")
  x = held.images[:config.eval.bpd_num_images]
  y = held.labels[:config.eval.bpd_num_images] if config.model.num_classes else None
  y = text.sample_conditions(config, y, len(x))  # a text model: the ids of the labels' prompts
  sde = sampling_sde(config)

  def bpd(p, x, y, rng):
    model_fn, _, prediction = sampler_setup(config, model, p, process, "ode")
    return bits_per_dim(model_fn, sde, x, rng, y=y, prediction=prediction, num_bins=config.eval.bpd_num_bins,
                        probe=config.eval.bpd_probe)
  fn = jax.jit(bpd, out_shardings=parallel.replicated(mesh))
  bpd, nfe = fn(params, x, y, jax.random.PRNGKey(config.seed + 3))
  bpd = np.asarray(bpd, np.float64)
  return dict(bpd=round(float(bpd.mean()), 4), bpd_stderr=round(float(bpd.std() / np.sqrt(len(bpd))), 4),
              nfe=int(nfe), num_images=len(bpd), sde=config.diffusion.sde or "vp", conditional=y is not None)


def evaluate(config, workdir, params=None, mesh=None):
  """Scores every run of config.sample.runs; `params` (the diffusion model's, loaded when None) serve the runs not
  sampled yet and the likelihood."""
  mesh = mesh or parallel.mesh_for(config)
  scorer = Scorer(config, workdir, mesh)
  num = config.sample.num_samples
  held = get_dataset(config, "eval")
  rows = [dict(run="real held-out images", **scorer(held.images[:num], held.labels[:num]))]
  noise = np.random.default_rng(config.seed).standard_normal((num,) + held.images.shape[1:])
  rows.append(dict(run="gaussian noise", **scorer(np.clip(noise, -1, 1).astype(np.float32))))
  samples = os.path.join(workdir, "samples")
  runs_path = os.path.join(samples, "runs.json")
  saved = {r["run"]: r for r in json.load(open(runs_path))} if os.path.exists(runs_path) else {}
  model, process = build.setup(config)
  classifier = None
  for name, steps, kwargs in parse_runs(config.sample.runs):
    label = run_label(name, steps, kwargs)
    if label in saved and os.path.exists(os.path.join(samples, f"{label}.npz")):
      data = np.load(os.path.join(samples, f"{label}.npz"))
      rows.append({**saved[label], **scorer(data["images"], data["labels"])})
      continue
    if classifier is None:  # the first run to stream: load what sampling needs, once
      params = build.load_params(config, workdir, mesh) if params is None else params
      classifier = load_classifier(config, workdir, mesh) if needs_classifier(config.sample.runs) else ()
      latents = build.load_latents(config, workdir, mesh)
    os.makedirs(samples, exist_ok=True)
    rows.append(dict(run=label, **score_sampler_run(config, scorer, model, process, params, mesh, name, steps, num,
                                                    jax.random.PRNGKey(config.seed + 1), classifier or None,
                                                    os.path.join(samples, f"{label}.png"), latents, **kwargs)))
  results = dict(metrics=scorer.describe(), features=config.eval.features, columns=scorer.columns(), rows=rows)
  if config.eval.enable_bpd:
    if latent.is_latent(config):
      raise ValueError("eval.enable_bpd measures bits/dim of images through the probability-flow ODE; a latent "
                       "diffusion model has no image likelihood of its own: set eval.enable_bpd=False")
    results["likelihood"] = held_out_bpd(config, workdir, params, mesh)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=1)
    write_report(workdir, results, scorer.names)
  return results


def resume_section(workdir):
  """report.md's lines on the config fields changed when training resumed (WORKDIR/resume_log.json), if any."""
  path = os.path.join(workdir, "resume_log.json")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [dict(step=r["step"], field=k, checkpoint=v["checkpoint"], now=v["now"])
            for r in json.load(f) for k, v in r["changes"].items()]
  return ["## Config changed on resume", "", "Training resumed with these fields changed from the checkpoint's "
          "config (`resume_log.json`): the steps after `step` used `now`.", "",
          markdown_table(rows, ("step", "field", "checkpoint", "now")), ""]


def write_report(workdir, results, names):
  cols = columns(results["columns"])
  runs = [r for r in results["rows"] if "sampler" in r]
  lines = ["# diffusion_jax report", "",
           f"{results['metrics']} Each row states its sample count (`num_samples`; 50,000 is the convention of "
           "published FID, which is biased upwards at smaller counts). IS uses 10 splits; class accuracy is the share "
           "of conditional samples classified as their label.", "",
           markdown_table(results["rows"], cols), ""]
  options = {k for r in runs for k in r if not is_score_field(k)} - set(cols) - {"nonfinite_fraction"}
  table, curves = pivot_by_nfe(runs, names.fid, options)
  plot_by_nfe(curves, names.fid_label, os.path.join(workdir, "fid_vs_nfe.png"), f"{names.fid_label} against NFE")
  lines += [f"## {names.fid_label} against network evaluations", "", table, "", "![FID against NFE](fid_vs_nfe.png)",
            ""]
  if "likelihood" in results:
    lk = results["likelihood"]
    lines += [f"Likelihood ({lk['sde']} probability-flow ODE, {lk['num_images']} held-out images, "
              f"{'class-conditional' if lk['conditional'] else 'unconditional'}): "
              f"{lk['bpd']:.3f} ± {lk['bpd_stderr']:.3f} bits/dim, {lk['nfe']} network evaluations.", ""]
  lines += resume_section(workdir)
  for r in runs:
    lines += [f"## {r['run']}", "", f"![{r['run']}](samples/{r['run']}.png)", ""]
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(lines))
