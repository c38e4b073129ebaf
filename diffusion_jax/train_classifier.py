"""Training of the noise-conditional classifier of classifier guidance (`--mode=train_classifier`): cross-entropy on
x_t drawn with the diffusion model's own noising process (Dhariwal & Nichol 2021, Sec. 4), its own checkpoints in
config.classifier.workdir, and held-out accuracy by noise level."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_jax import parallel
from diffusion_jax.data import get_dataset
from diffusion_jax.parametrization import q_sample
from diffusion_jax.tables import markdown_table
from diffusion_jax.train import apply_gradients, fit
from diffusion_jax.build import (classifier_dir, create_or_restore, get_classifier, init_classifier_state,
                                 make_optimizer, setup)

NUM_NOISE_BINS = 8


def make_train_step(config, clf, process, tx):
  """Cross-entropy of the classifier on x_t, t drawn as in diffusion training (process.sample_t)."""
  def train_step(state, batch):
    k_t, k_eps, k_drop = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
    x0, y = batch["image"], batch["label"]
    t = process.sample_t(k_t, x0.shape[0])
    x_t = q_sample(process, x0, t, jax.random.normal(k_eps, x0.shape, x0.dtype))

    def loss_fn(p):
      logits = clf.apply({"params": p}, x_t, process.network_time(t), train=True, rngs={"dropout": k_drop})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == y), "grad_norm": optax.tree.norm(grads)}
    return apply_gradients(state, grads, tx, config.classifier.training.ema_decay), metrics
  return train_step


def noise_bins(num_bins=NUM_NOISE_BINS):
  """Bin centres t = (k + 1/2) / num_bins of (0, 1]: from nearly clean to pure noise."""
  return (np.arange(num_bins) + 0.5) / num_bins


def accuracy_by_noise(clf, process, images, labels, seed=0):
  """params -> held-out accuracy of the classifier on x_t at each noise_bins() time (one fixed noise draw per image),
  as rows {t, log_snr, accuracy}; compiled once, evaluated at every bin."""
  x0, y = jnp.asarray(images), jnp.asarray(labels)
  eps = jax.random.normal(jax.random.PRNGKey(seed), x0.shape)

  @jax.jit
  def accuracy(params, t):
    t = jnp.full((x0.shape[0],), t)
    logits = clf.apply({"params": params}, q_sample(process, x0, t, eps), process.network_time(t))
    return jnp.mean(jnp.argmax(logits, -1) == y)
  bins = [(round(float(t), 4), round(float(process.log_snr(jnp.asarray(t))), 3)) for t in noise_bins()]
  return lambda params: [dict(t=t, log_snr=lam, accuracy=round(float(accuracy(params, t)), 4)) for t, lam in bins]


def train_classifier(config, workdir, mesh=None):
  """Trains the classifier to config.classifier.training.num_steps, resuming from its own checkpoints; writes the
  held-out accuracy by noise level (accuracy_by_noise.md / .json) in the classifier's directory. Returns the state."""
  mesh = mesh or parallel.mesh_for(config)
  ccfg = config.classifier
  parallel.check_batch(ccfg.training.batch_size, mesh)
  _, process = setup(config)
  data, held = get_dataset(config, "train"), get_dataset(config, "eval")
  if data.num_classes != ccfg.model.num_classes:
    raise ValueError(f"classifier.model.num_classes is {ccfg.model.num_classes} but the {config.data.name!r} data has "
                     f"{data.num_classes} classes")
  clf, tx = get_classifier(config), make_optimizer(ccfg.optim)
  out = classifier_dir(config, workdir)
  state, mngr = create_or_restore(config, os.path.join(out, "checkpoints"),
                                  lambda rng: init_classifier_state(config, clf, tx, rng), mesh,
                                  ccfg.training.keep_checkpoints, section="classifier.model",
                                  resume_log=os.path.join(out, "resume_log.json"))
  accuracy = accuracy_by_noise(clf, process, held.images, held.labels, config.seed)
  evaluated = {}  # step -> rows, so the final evaluation is not repeated

  def log_accuracy(done, state, writer):
    if done % ccfg.training.eval_every == 0 or done == ccfg.training.num_steps:
      evaluated[done] = accuracy(state.ema_params)
      writer.write_scalars(done, {f"held_out_accuracy/t={r['t']}": r["accuracy"] for r in evaluated[done]})

  def batch(step, rows):
    x, y = data.batch(config.seed, step, ccfg.training.batch_size, rows)
    return {"image": x, "label": y}
  state = fit(config, ccfg.training, state, mngr, make_train_step(config, clf, process, tx), batch, mesh,
              os.path.join(out, "logs"), log_accuracy, desc="classifier")
  rows = evaluated.get(int(state.step)) or accuracy(state.ema_params)
  if jax.process_index() == 0:
    with open(os.path.join(out, "accuracy_by_noise.json"), "w") as f:
      json.dump(dict(step=int(state.step), num_images=len(held), rows=rows), f, indent=1)
    with open(os.path.join(out, "accuracy_by_noise.md"), "w") as f:
      f.write(f"Held-out accuracy of the noise-conditional classifier (EMA, step {int(state.step)}, {len(held)} "
              f"images, one noise draw each) on x_t:\n\n" + markdown_table(rows, ["t", "log_snr", "accuracy"]) + "\n")
  return state


