"""The embedded text-to-image demo (configs/digits_text.py): trains the digits autoencoder, then a text encoder and a
cross-attention U-Net jointly on the latents of captioned digits (both resumable), then writes a report of prompts
next to their samples, with the digits classifier's accuracy against the digit each prompt names, and a sweep of the
classifier-free guidance strength w (FID-digits, IS-digits, accuracy). Prompts use the training caption templates and
one template never seen in training.

  python -m experiments.text_to_image_digits --workdir=runs/digits_text [--w=0,1,2,4] [--prompt_w=1] [--per_prompt=20]

Writes WORKDIR/text_to_image/: report.md, results.csv (the w sweep), prompts.csv, prompts/*.png."""
import os

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from diffusion_jax import build, parallel, tables, text, train
from diffusion_jax.evaluation.features import Scorer, metric_names
from diffusion_jax.images import save_grid
from diffusion_jax.sample import make_generate, run_label
from diffusion_jax.train_autoencoder import train_autoencoder
from diffusion_jax.samplers import parse_runs
from experiments.scoring import score_runs

UNSEEN_TEMPLATE = "a drawing of the digit {word}"  # not among the training captions
CLIP_COLUMNS = ("clip_score", "cmmd_clip", "fd_clip")  # with eval.features including clip (and eval.clip_score)


def prompts(config):
  """(template, digit, prompt): the training templates in turn over the ten digits, then the unseen one for each."""
  seen = [(config.text.captions[d % len(config.text.captions)], d) for d in range(10)]
  return [(t, d, text.caption(t, d)) for t, d in seen + [(UNSEEN_TEMPLATE, d) for d in range(10)]]


def sweep_w(config, workdir, out, ws, sampler, per_class):
  """Rows of FID / IS / class accuracy of `sampler` at each guidance strength, prompts from the first template."""
  (name, steps, base), = parse_runs(sampler)
  runs = [(run_label(name, steps, {**base, "w": float(w)}), name, steps, {**base, "w": float(w)}, {"w": float(w)})
          for w in ws]
  return score_runs(config, workdir, out, runs, per_class * config.model.num_classes)


def prompt_grids(config, workdir, out, w, sampler, per_prompt):
  """Samples of each prompt at guidance w (all prompts in one compiled batch): a PNG each and the share classified as
  the digit the prompt names."""
  mesh = parallel.mesh_for(config)
  model, process = build.setup(config)
  params = build.load_params(config, workdir, mesh)
  latents = build.load_latents(config, workdir, mesh)
  scorer = Scorer(config, workdir, mesh)
  (name, steps, base), = parse_runs(sampler)
  listed = prompts(config)
  y = np.repeat(text.get_text(config).ids([p for _, _, p in listed]), per_prompt, axis=0)
  generate = make_generate(config, model, process, mesh, name, steps, len(y), latents=latents, **base, w=w)
  images, _ = generate(params, jax.random.PRNGKey(config.seed + 10), parallel.shard_batch(y, mesh), None,
                       latents.params)
  images = np.clip(parallel.to_host(images), -1.0, 1.0).reshape(len(listed), per_prompt, *images.shape[1:])
  rows = []
  for i, ((template, digit, prompt), grid) in enumerate(zip(listed, images)):
    path = f"prompts/{i:02d}.png"
    if jax.process_index() == 0:
      save_grid(grid, os.path.join(out, path), nrow=max(per_prompt // 2, 1))
    acc = scorer.stream()
    acc.add(grid, np.full(per_prompt, digit), prompts=[prompt] * per_prompt)
    scored = acc.row()
    rows.append(dict(prompt=prompt, digit=digit, seen_template=template != UNSEEN_TEMPLATE, w=w,
                     class_accuracy=round(float(scored["class_accuracy"]), 3), samples=f"![{prompt}]({path})",
                     **{k: scored[k] for k in ("clip_score",) if k in scored}))
  return rows


def write_report(out, sweep, rows, sampler, w, per_class, names):
  sweep = sorted(sweep, key=lambda r: r["w"])
  clip = [c for c in CLIP_COLUMNS if any(c in r for r in sweep)]
  sweep_cols = ("w", names.fid, names.inception_score, "class_accuracy", *clip, "num_samples", "nfe", "seconds", "run")
  prompt_cols = ("prompt", "digit", "seen_template", "class_accuracy", *clip[:1], "samples")
  clip_note = ("CLIPScore is each sample's against its own prompt." if clip else
               "CLIPScore and CMMD need real CLIP weights, which nothing here downloads: rerun with "
               "`--config.eval.features=digits,clip --config.eval.clip_weights=DIR --config.eval.clip_score=True` "
               "(DIR: a local openai/clip-vit-large-patch14-336). A CLIP trained on these 1,797 8 x 8 digits would "
               "score agreement with ten class captions, which the class accuracy already measures.")
  tables.write_csv(sweep, sweep_cols, os.path.join(out, "results.csv"))
  tables.write_csv(rows, prompt_cols[:-1], os.path.join(out, "prompts.csv"))
  seen = [r["class_accuracy"] for r in rows if r["seen_template"]]
  unseen = [r["class_accuracy"] for r in rows if not r["seen_template"]]
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join([
        "# Text-to-image on the digits", "",
        f"Latent diffusion with a jointly trained CLIP text encoder; {sampler} with classifier-free guidance. Class "
        "accuracy is the share of samples that the digits evaluation classifier (a clean-image classifier) assigns to "
        f"the digit the prompt names. {clip_note}", "",
        f"## Guidance strength ({per_class} samples per digit, prompts from the first caption template)", "",
        tables.markdown_table(sweep, sweep_cols), "",
        f"## Prompts and their samples (w = {w:g})", "",
        f"Mean accuracy: {np.mean(seen):.3f} with the training templates, {np.mean(unseen):.3f} with the unseen "
        f"template \"{UNSEEN_TEMPLATE}\".", "",
        tables.markdown_table(rows, prompt_cols), ""]))


FLAGS = flags.FLAGS


def define_flags():
  config_flags.DEFINE_config_file("config", "configs/digits_text.py", "The text-to-image config.")
  flags.DEFINE_string("workdir", "runs/digits_text", "Workdir: autoencoder, text model, report.")
  flags.DEFINE_list("w", ["0", "1", "2", "4"], "Classifier-free guidance strengths of the sweep.")
  flags.DEFINE_float("prompt_w", 1.0, "Guidance strength of the prompt grids.")
  flags.DEFINE_string("sampler", "ddim:50", "The sampler run (name:steps[:key=value]), without w.")
  flags.DEFINE_integer("per_class", 50, "Samples per digit and strength in the sweep.")
  flags.DEFINE_integer("per_prompt", 20, "Samples per prompt.")


def run(config, workdir, ws, prompt_w, sampler, per_class, per_prompt):
  train_autoencoder(config, workdir)
  train.train(config, workdir)
  out = os.path.join(workdir, "text_to_image")
  sweep = sweep_w(config, workdir, out, ws, sampler, per_class)
  rows = prompt_grids(config, workdir, out, prompt_w, sampler, per_prompt)
  if jax.process_index() == 0:
    write_report(out, sweep, rows, sampler, prompt_w, per_class, metric_names(config.eval.features))
  return sweep, rows


def app_main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  run(FLAGS.config, FLAGS.workdir, FLAGS.w, FLAGS.prompt_w, FLAGS.sampler, FLAGS.per_class, FLAGS.per_prompt)
  logging.info("Wrote %s", os.path.join(FLAGS.workdir, "text_to_image", "report.md"))


if __name__ == "__main__":
  define_flags()
  app.run(app_main)
