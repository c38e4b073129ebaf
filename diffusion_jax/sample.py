"""Draws samples from a trained model with the samplers named in `config.sample.runs`, sharded over the mesh;
writes one PNG grid and one .npz of samples per run, with the wall-clock time."""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from diffusion_jax import build, checkpoint, latent, parallel, text
from diffusion_jax.guidance import (autoguidance, check_labels, classifier_free, classifier_grad, classifier_guided,
                                    guidance_rule, limited_interval)
from diffusion_jax.images import save_grid
from diffusion_jax.models import make_model_fn
from diffusion_jax.models.classifier import make_log_prob_fn
from diffusion_jax.samplers import get_sampler, parse_runs
from diffusion_jax.samplers.common import GUIDANCE_OPTIONS, check_reverse_noise, sampler_options
from diffusion_jax.parametrization import vp_view
from diffusion_jax.schedules import Schedule, of_path
from diffusion_jax.sde import VPSDE, on_sde, sde_from_config


def label_value(v):
  """An option's value in a run label (a file name): tuples joined by "-", a path's "/" and ":" as "_"."""
  if isinstance(v, tuple):
    return "-".join(map(str, v))
  return str(v).replace(os.sep, "_").replace(":", "_").strip("_.")


def run_label(name, steps, kwargs):
  return "_".join([name, str(steps)] + [f"{k}{label_value(v)}" for k, v in sorted(kwargs.items())])


def sampling_sde(config):
  """The SDE of the pc / ode samplers and of the likelihood: the training SDE, or VP for a discrete-schedule model."""
  return sde_from_config(config.diffusion, config.diffusion.sde or "vp", latent.diffusion_shape(config)[0])


def on_sampler_process(config, fn, process, name, prediction=None):
  """(fn, process the sampler runs on, the prediction it sees) for a function fn(x_t, t, y) of a model trained on
  `process`: a network's `prediction`, or with prediction=None a noisy classifier's log-probability. Discrete
  samplers run on the training schedule, a VP SDE's DDPM discretisation, or any other path's variance-preserving view
  (schedules.of_path, parametrization.vp_view: v-predictions); SDE samplers (pc, ode, flow) on sampling_sde(config),
  where a discrete model is queried at equal log-SNR."""
  if get_sampler(name).process == "sde":
    sde = sampling_sde(config)
    return (on_sde(fn, process, sde) if isinstance(process, Schedule) else fn), sde, prediction
  if isinstance(process, Schedule):
    return fn, process, prediction
  if isinstance(process, VPSDE):
    if prediction == "velocity":  # the VP path's own scale: vp_view only converts the prediction to v
      return vp_view(fn, process, prediction), process.discrete_schedule(), "v"
    return fn, process.discrete_schedule(), prediction
  return vp_view(fn, process, prediction), of_path(process, process.N), None if prediction is None else "v"


def sampler_setup(config, model, params, process, name):
  """(model_fn, process the sampler runs on, the prediction it sees) for sampler `name` and a network trained on
  `process`."""
  return on_sampler_process(config, make_model_fn(model, params, process), process, name, config.diffusion.prediction)


def is_conditional(config):
  """Whether the network takes a condition y: class labels, or a text model's token ids."""
  return bool(config.model.get("num_classes", 0)) or text.is_text(config)


GUIDANCE_RULE_OPTIONS = ("interval", "rescale", "apg", "apg_eta", "apg_r", "apg_beta")


def guidance_options(config, kwargs, has_classifier):
  """Pops the guidance options of a run's options (samplers.common.GUIDANCE_OPTIONS) into a dict and checks them
  against each other, the model and the classifier: `w` of classifier-free guidance (w = -1 is the model's
  unconditional mode) or, with `guide`, of autoguidance; `interval`, `rescale` and `apg*`, which change how w guides;
  `s` of classifier guidance."""
  g = {k: kwargs.pop(k, d) for k, d in GUIDANCE_OPTIONS.items()}
  w, s = g["w"], g["s"]
  if w < -1:
    raise ValueError(f"Guidance strength w={w} is below -1 (w = -1 is the unconditional model); valid: w >= -1")
  if g["guide"] and w <= 0:
    raise ValueError(f"Autoguidance (guide={g['guide']}) needs a strength w > 0, got w={w}")
  if w and not g["guide"] and not is_conditional(config):
    raise ValueError(f"Classifier-free guidance (w={w}) needs a class- or text-conditional model "
                     "(model.num_classes > 0 or model.context_dim > 0); an unconditional one can be autoguided "
                     "(w= with guide=WORKDIR)")
  if w and not g["guide"] and not config.training.p_uncond:
    logging.warning("Classifier-free guidance with w=%s on a model trained without label dropout "
                    "(training.p_uncond = 0): it has no trained unconditional mode", w)
  changed = [k for k in GUIDANCE_RULE_OPTIONS if g[k] != GUIDANCE_OPTIONS[k]]
  if changed and w <= 0:
    raise ValueError(f"{', '.join(changed)} change how guidance of strength w acts: set w > 0 (got w={w})")
  if g["interval"] and (len(g["interval"]) != 2 or not 0 <= g["interval"][0] <= g["interval"][1]):
    raise ValueError(f"interval={','.join(map(str, g['interval']))} must be two noise levels sigma_lo,sigma_hi of "
                     "sigma_t / alpha_t with 0 <= sigma_lo <= sigma_hi, e.g. interval=0.28,5.42")
  if not 0 <= g["rescale"] <= 1:
    raise ValueError(f"rescale={g['rescale']} is CFG rescale's phi, which lies in [0, 1] (Lin et al. use 0.7)")
  apg_set = [k for k in ("apg_eta", "apg_r", "apg_beta") if g[k] != GUIDANCE_OPTIONS[k]]
  if apg_set and not g["apg"]:
    raise ValueError(f"{', '.join(apg_set)} set without apg=true: they are adaptive projected guidance's options")
  if g["apg_r"] < 0 or not -1 < g["apg_beta"] < 1:
    raise ValueError(f"APG needs a norm threshold apg_r >= 0 (0: none) and a momentum -1 < apg_beta < 1; got "
                     f"apg_r={g['apg_r']}, apg_beta={g['apg_beta']}")
  if s and g["apg"] and g["apg_beta"]:
    raise ValueError("Classifier guidance (s=) does not compose with APG's momentum (apg_beta != 0); use apg_beta=0")
  if s and not has_classifier:
    raise ValueError(f"Classifier guidance (s={s}) needs a trained noise-conditional classifier "
                     "(--mode=train_classifier)")
  if latent.is_latent(config) and (config.sample.clip_x0 or s):
    raise ValueError("A latent diffusion model samples with sample.clip_x0=False (latents are not in [-1, 1]) and "
                     "without classifier guidance (s=): the classifier sees images")
  return g


def guided_model(model_fn, guide_fn, g, null, process, prediction):
  """The model guided as the options g of guidance_options say (before classifier guidance), on the sampler's
  process and prediction: classifier-free guidance, or with a guide autoguidance, by g's rule (plain, APG, CFG
  rescale), within g's interval of noise levels if one is set."""
  rule, stateful = guidance_rule(g["w"], process, prediction, g["rescale"], g["apg"], g["apg_eta"], g["apg_r"],
                                 g["apg_beta"])
  if guide_fn is not None:
    guided = autoguidance(model_fn, guide_fn, g["w"], rule, stateful)
  else:
    guided = classifier_free(model_fn, g["w"], null, rule, stateful)
  return limited_interval(guided, model_fn, process, g["interval"]) if g["interval"] else guided


def sampler_kwargs(config, name, kwargs):
  """A run's options, with the sample section's clip_x0, spacing and ddpm_variance where the sampler takes them."""
  generic = dict(clip_x0=config.sample.clip_x0, spacing=config.sample.spacing, variance=config.sample.ddpm_variance)
  accepted = sampler_options(name)
  return {**{k: v for k, v in generic.items() if k in accepted}, **kwargs}


def check_sampling(config, process, workdir=None):
  """Checks the sample section before anything compiles (`--mode=all` fails before training, not after it): the
  prompt and the classes against the model's conditioning, and every run of sample.runs, its options (parse_runs),
  its guidance, and its values, by tracing the sampler once around a stand-in network. A guide (autoguidance) must
  have a checkpoint, unless it is a step of this run's own `workdir`, which training may still write (keep it with
  training.keep_checkpoints)."""
  conditional = is_conditional(config)
  if config.sample.prompt and not text.is_text(config):
    raise ValueError(f"sample.prompt={config.sample.prompt!r} needs a text-conditioned model (model.context_dim > 0);"
                     + (" this one is class-conditional: pick classes with sample.classes" if conditional else
                        " this one is unconditional"))
  runs = parse_runs(config.sample.runs)
  if config.sample.classes and not conditional and not all(kwargs.get("s") for _, _, kwargs in runs):
    raise ValueError(f"sample.classes={config.sample.classes!r} needs class labels, which this unconditional model "
                     "does not take: give every run classifier guidance (s=), or leave sample.classes empty")
  if config.sample.classes and text.fixed_prompt(config):
    raise ValueError(f"sample.classes={config.sample.classes!r} with the fixed prompt {config.sample.prompt!r}: "
                     "put {digit} or {word} in the prompt to sample those classes, or leave sample.classes empty")
  shape = (1, *latent.diffusion_shape(config))
  for name, steps, kwargs in runs:
    kwargs = dict(kwargs)
    g = guidance_options(config, kwargs, has_classifier=True)  # load_classifier says so if none was trained
    if g["guide"]:
      check_guide_spec(config, g["guide"], workdir)
    fn, on, prediction = on_sampler_process(config, lambda x, t, y=None: jnp.zeros_like(x), process, name,
                                            config.diffusion.prediction)
    if g["w"] > 0:  # the guided stand-in (as autoguided, which needs no labels): a rule the sampler cannot run fails
      fn = guided_model(fn, fn, g, None, on, prediction)
    jax.eval_shape(lambda rng: get_sampler(name)(fn, on, shape, rng, num_steps=steps, prediction=prediction,
                                                 **sampler_kwargs(config, name, kwargs)), jax.random.PRNGKey(0))


def check_guide_spec(config, spec, workdir=None):
  """A guide (run option guide=) is another run's checkpoint that can guide this model (build.check_guide), or a step
  of this run's own `workdir` that training will write: given as :step, at most training.num_steps."""
  guide_dir, step = build.guide_workdir(spec)
  if workdir and os.path.abspath(guide_dir) == os.path.abspath(workdir):
    if step is None or int(step) >= config.training.num_steps:
      raise ValueError(f"guide={spec} is this run's own workdir: name an earlier checkpoint, guide={spec}:STEP with "
                       f"STEP < training.num_steps = {config.training.num_steps} (the last step would guide the model "
                       "by itself, which is no guidance), kept with training.keep_checkpoints")
    return
  mngr, step = build.guide_checkpoint(spec)
  build.check_guide(config, spec, checkpoint.saved_config(mngr, step))


def num_label_classes(config, classifier=None):
  """Classes of the sampled labels: the model's, or for an unconditional model guided by a classifier, the classifier's;
  none for a text model sampling one fixed prompt."""
  if text.fixed_prompt(config):
    return 0
  return config.model.get("num_classes", 0) or (classifier.num_classes if classifier is not None else 0)


def unconditional(model_fn):
  """model_fn with the condition dropped (an unconditional network: labels only steer a classifier)."""
  return lambda x, t, y=None: model_fn(x, t, None)


def make_generate(config, model, process, mesh, name, num_steps, batch_size, classifier=None, latents=None,
                  guide_net=None, **kwargs):
  """A jitted (params, rng, y, classifier_params=None, decoder_params=None, guide_params=None) -> (images, nfe)
  function for one sampler run; y: class labels, a text model's token ids, or None for unconditional models. The run's
  guidance options (guidance_options) combine: `w` with classifier-free guidance (both passes in one batched network
  call; the null condition is the null label or the empty prompt's ids) or autoguidance by the flax module
  `guide_net` (build.load_guide; both networks in the one compiled loop), by plain, APG or rescaled CFG, within an
  interval of noise levels; and `s`, classifier guidance by jax.grad through the flax module `classifier`. A latent
  model's samples are decoded by `latents` (latent.Latents) with decoder_params."""
  sampler = get_sampler(name)
  kwargs = dict(kwargs)
  g = guidance_options(config, kwargs, classifier is not None)
  w, s = g["w"], g["s"]
  if g["guide"] and guide_net is None:
    raise ValueError(f"guide={g['guide']}: autoguidance needs the guiding network (build.load_guide)")
  if latent.is_latent(config) and latents is None:
    raise ValueError("A latent diffusion model samples with its autoencoder (latent.load)")
  shape = (batch_size, *latent.diffusion_shape(config))
  _, on, _ = sampler_setup(config, model, None, process, name)  # fails early if the sampler does not apply
  kwargs = sampler_kwargs(config, name, kwargs)
  check_reverse_noise(name, on, kwargs)
  fixed_nfe = sampler.nfe(num_steps, kwargs)  # None: the sampler counts its own (an adaptive solver)
  null = text.null_condition(config) if w and not g["guide"] else None

  def generate(params, rng, y, classifier_params=None, decoder_params=None, guide_params=None):
    model_fn, on, prediction = sampler_setup(config, model, params, process, name)
    guide_fn = None if guide_net is None else sampler_setup(config, guide_net, guide_params, process, name)[0]
    if not is_conditional(config):  # labels only steer the classifier
      model_fn, guide_fn = (None if f is None else unconditional(f) for f in (model_fn, guide_fn))
    if w:
      model_fn = guided_model(model_fn, guide_fn, g, null, on, prediction)
    extra = {} if fixed_nfe is not None else {"return_nfe": True}
    if s:
      log_prob, _, _ = on_sampler_process(config, make_log_prob_fn(classifier, classifier_params, process), process,
                                          name)
      grad = classifier_grad(log_prob)
      if sampler.mean_shift_guidance:  # Dhariwal & Nichol's Alg. 1: the mean moves by s Sigma grad
        extra["classifier_grad"] = lambda x, t, y: s * grad(x, t, y)
      else:  # Alg. 2: eps - s sigma grad, i.e. score + s grad
        model_fn = classifier_guided(model_fn, on, grad, s, prediction)
    out = sampler(model_fn, on, shape, rng, num_steps=num_steps, y=y, prediction=prediction,
                  **kwargs, **extra)
    x, nfe = out if fixed_nfe is None else (out, jnp.asarray(fixed_nfe))
    return (x if latents is None else latents.decode(decoder_params, x)), nfe
  return jax.jit(generate, out_shardings=(parallel.batch_sharded(mesh), parallel.replicated(mesh)))


def sample_labels(num_classes, num, classes=""):
  """Labels cycling through `classes` ("3" or "0,5,7"; "" is 0, 1, ..., K-1), checked against the K classes;
  None without classes."""
  if not num_classes:
    if classes:
      raise ValueError(f"sample.classes={classes!r} needs class labels: a class-conditional model or a classifier (s=)")
    return None
  chosen = np.array([int(c) for c in str(classes).split(",")] if classes else np.arange(num_classes), np.int32)
  check_labels(chosen, num_classes)
  return chosen[np.arange(num) % len(chosen)]


def sample_batches(config, model, process, params, mesh, name, num_steps, num, rng, classifier=None, latents=None,
                   **kwargs):
  """Streams `num` samples in batches of config.sample.batch_size, each split over every device of every process and
  gathered once to every process: yields (images clipped to [-1, 1], labels or None,
  seconds excluding compilation, NFE) per batch, so a metric can consume 50,000 samples without holding them.
  `classifier` = (module, params) for run option `s`; `latents` (latent.Latents) decodes a latent model's samples; the
  guiding model of run option `guide` is loaded here (build.load_guide)."""
  clf, clf_params = classifier or (None, None)
  guide_net, guide_params = build.load_guide(config, kwargs["guide"], mesh) if kwargs.get("guide") else (None, None)
  bs = min(config.sample.batch_size, num)
  bs = -(-bs // mesh.devices.size) * mesh.devices.size
  parallel.check_batch(bs, mesh, "sample batch size")
  nb = -(-num // bs)
  labels = sample_labels(num_label_classes(config, clf), nb * bs, config.sample.classes)
  conds = text.sample_conditions(config, labels, nb * bs)  # the labels, or a text model's prompt ids
  ys = [None if conds is None else parallel.shard_batch(conds[b * bs:(b + 1) * bs], mesh) for b in range(nb)]
  gen = make_generate(config, model, process, mesh, name, num_steps, bs, clf, latents, guide_net, **kwargs)
  dec_params = None if latents is None else latents.params
  gen = gen.lower(params, rng, ys[0], clf_params, dec_params, guide_params).compile()
  for b in tqdm(range(nb), desc=f"sampling {name}-{num_steps}", mininterval=5.0, disable=nb < 4):
    start = time.time()
    images, nfe = gen(params, jax.random.fold_in(rng, b), ys[b], clf_params, dec_params, guide_params)
    images, keep = np.clip(parallel.to_host(images), -1.0, 1.0), min(bs, num - b * bs)  # the pixel range; NaN stays
    yield images[:keep], None if labels is None else labels[b * bs:b * bs + keep], time.time() - start, float(nfe)


def generate_samples(config, model, process, params, mesh, name, num_steps, num, rng, classifier=None, latents=None,
                     **kwargs):
  """All `num` samples of sample_batches at once: (images [num, H, W, C], labels or None, seconds, mean NFE)."""
  images, labels, seconds, nfe = zip(*sample_batches(config, model, process, params, mesh, name, num_steps, num, rng,
                                                     classifier, latents, **kwargs))
  return (np.concatenate(images), None if labels[0] is None else np.concatenate(labels), sum(seconds),
          float(np.mean(nfe)))


def needs_classifier(runs):
  return any(kwargs.get("s", 0) for _, _, kwargs in parse_runs(runs))


def sample(config, workdir, params, model, process, mesh):
  """Runs every sampler of config.sample.runs; returns a list of run records (also written to samples/runs.json).
  Runs with classifier guidance (`s=`) use the classifier trained by --mode=train_classifier."""
  classifier = build.load_classifier(config, workdir, mesh) if needs_classifier(config.sample.runs) else None
  latents = build.load_latents(config, workdir, mesh)
  outdir = os.path.join(workdir, "samples")
  os.makedirs(outdir, exist_ok=True)
  records = []
  for name, steps, kwargs in parse_runs(config.sample.runs):
    label = run_label(name, steps, kwargs)
    rng = jax.random.PRNGKey(config.seed + 1)
    images, labels, seconds, nfe = generate_samples(config, model, process, params, mesh, name, steps,
                                                    config.sample.num_samples, rng, classifier, latents, **kwargs)
    bad = float(np.mean(~np.isfinite(images).all(axis=(1, 2, 3))))
    if bad:
      logging.error("%s: %.1f%% of the samples contain NaN or Inf; they are kept in the .npz and reported in runs.json",
                    label, 100 * bad)
    if jax.process_index() == 0:
      np.savez(os.path.join(outdir, f"{label}.npz"), images=images, labels=labels if labels is not None else [])
      save_grid(images[:100], os.path.join(outdir, f"{label}.png"))
    records.append(dict(run=label, sampler=name, steps=steps, nfe=int(round(nfe)), seconds=round(seconds, 2),
                        num_samples=len(images), nonfinite_fraction=bad, **kwargs))
    logging.info("sampled %s: %d images in %.1f s", label, len(images), seconds)
  if jax.process_index() == 0:
    with open(os.path.join(outdir, "runs.json"), "w") as f:
      json.dump(records, f, indent=1)
  return records
