"""From a config to what a run is made of: the network and the process it trains on (setup), optimizers, train
states (new, or restored from a checkpoint directory), and the trained networks a run loads: the diffusion model's
parameters, the noise-conditional classifier of classifier guidance, the autoencoder of latent diffusion. Training,
sampling, evaluation, conversion and the experiments build through here; it imports none of them."""
import json
import os
import re
import time

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from diffusion_jax import checkpoint, latent, parallel, text
from diffusion_jax import losses
from diffusion_jax.losses import get_weighting
from diffusion_jax.models import get_model
from diffusion_jax.models.autoencoder import AutoencoderKL
from diffusion_jax.models.classifier import NoisyClassifier
from diffusion_jax.parametrization import check_prediction
from diffusion_jax.schedules import Schedule, get_schedule, rescale_zero_terminal_snr
from diffusion_jax.sde import VESDE, sde_from_config
from diffusion_jax.timesteps import TIME_SAMPLINGS, Uniform, get_time_sampling


OPTIMIZERS = ("adam", "adamw")


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: dict
  ema_params: dict
  opt_state: optax.OptState
  rng: jnp.ndarray


def make_optimizer(optim):
  """Adam / AdamW with linear warmup to a constant rate (Ho et al. 2020) or, with optim.decay_steps > 0, then a cosine
  decay to 0 at that step (Loshchilov & Hutter 2017), and global-norm gradient clipping."""
  if optim.optimizer not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {optim.optimizer!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
  decay = optim.get("decay_steps", 0)
  if decay and decay <= optim.warmup_steps:
    raise ValueError(f"optim.decay_steps={decay} must exceed optim.warmup_steps={optim.warmup_steps} (or be 0: a "
                     "constant rate after the warmup)")
  if decay:
    lr = optax.warmup_cosine_decay_schedule(0.0, optim.lr, optim.warmup_steps, decay, 0.0)
  else:
    lr = optax.linear_schedule(0.0, optim.lr, optim.warmup_steps) if optim.warmup_steps else optim.lr
  if optim.optimizer == "adam":
    opt = optax.adam(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  else:
    opt = optax.adamw(lr, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay)
  return optax.chain(optax.clip_by_global_norm(optim.grad_clip), opt) if optim.grad_clip else opt


def model_optimizer(config):
  """The diffusion model's optimizer (config.optim); a frozen text encoder (text.train_encoder=False) is not updated."""
  tx = make_optimizer(config.optim)
  if not text.is_text(config) or config.text.train_encoder:
    return tx
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               lambda params: {k: "frozen" if k == "text_encoder" else "train" for k in params})


T_SAMPLINGS = ("importance",) + tuple(TIME_SAMPLINGS.names())
ZERO_SNR_UNDEFINED = ("likelihood", "edm", "sigmoid")  # weightings infinite at SNR 0


def setup(config):
  """(model, process) for a config, validating the names it uses: the process is the discrete schedule
  diffusion.schedule, or with diffusion.sde set the continuous path (an SDE) of continuous-time training."""
  d, tc = config.diffusion, config.training
  check_prediction(d.prediction)
  decay = config.optim.get("decay_steps", 0)
  if 0 < decay < tc.num_steps:
    raise ValueError(f"optim.decay_steps={decay} ends the cosine decay before training.num_steps={tc.num_steps}: the "
                     f"last {tc.num_steps - decay} steps would have a learning rate of 0; set optim.decay_steps to "
                     "training.num_steps (or 0: a constant rate)")
  get_weighting(tc.weighting)
  if tc.t_sampling not in T_SAMPLINGS:
    raise ValueError(f"Unknown training.t_sampling {tc.t_sampling!r}; valid: {', '.join(T_SAMPLINGS)}")
  if d.get("zero_terminal_snr"):
    if d.sde:
      raise ValueError(f"diffusion.zero_terminal_snr rescales a discrete schedule; diffusion.sde={d.sde!r} is a "
                       "continuous path (rectified_flow and cosine_interpolant already reach SNR 0): unset one")
    if d.prediction not in ("v", "x0"):
      raise ValueError(f"diffusion.zero_terminal_snr needs prediction v or x0 (Lin et al. use v): at SNR 0 the "
                       f"input is pure noise, so eps is known and x0 = (x_t - sigma eps) / alpha divides by alpha = 0; "
                       f"got prediction={d.prediction!r}")
    if tc.weighting in ZERO_SNR_UNDEFINED:
      raise ValueError(f"training.weighting={tc.weighting!r} weighs by the log-SNR's derivative or 1 / SNR, infinite "
                       "at the last step of a zero-terminal-SNR schedule; valid there: uniform, p2, min_snr")
  if not d.sde:
    if d.prediction == "velocity" or tc.t_sampling not in ("uniform", "importance") or config.model.get("precondition"):
      raise ValueError(f"prediction={d.prediction!r}, t_sampling={tc.t_sampling!r}, model.precondition="
                       f"{config.model.get('precondition')!r} needs a continuous path: set diffusion.sde (e.g. "
                       "rectified_flow, edm), or use eps / x0 / v, uniform or importance t, no preconditioning")
    schedule = get_schedule(d.schedule, d.num_timesteps, resolution=latent.diffusion_shape(config)[0])
    return get_model(config), rescale_zero_terminal_snr(schedule) if d.get("zero_terminal_snr") else schedule
  process = sde_from_config(d, resolution=latent.diffusion_shape(config)[0])
  time_sampling(config)  # its parameters are valid
  if config.model.get("precondition") == "edm":
    if not isinstance(process, VESDE) or d.prediction != "x0":
      raise ValueError(f"model.precondition='edm' is a denoiser D(x; sigma) of x = x_0 + sigma n: it needs the edm or "
                       f"ve path and prediction x0, not diffusion.sde={d.sde!r}, prediction={d.prediction!r}")
    if config.model.name == "ncsnpp" and config.model.get("embedding_type") == "fourier":
      raise ValueError("model.precondition='edm' feeds ln(sigma) / 4 to the network, which NCSN++'s Fourier features "
                       "would take the log of again: use embedding_type='positional'")
  if d.prediction == "velocity" and tc.weighting not in ("uniform",) and ":" not in tc.weighting:
    raise ValueError(f"training.weighting={tc.weighting!r} is defined on the eps, x0 or v loss; with the velocity "
                     "target use uniform (or a module:function weighting)")
  t = jnp.array([0.1, 0.5, 0.9])
  if d.prediction == "v" and not jnp.allclose(sum(jnp.square(a) for a in process.alpha_sigma(t)), 1.0, atol=1e-4):
    raise ValueError(f"prediction 'v' assumes alpha^2 + sigma^2 = 1, which the {d.sde!r} path does not have; "
                     "use eps, x0 or velocity")
  return get_model(config), process


def effective_weighting(config, process, lam):
  """w(lambda) of the config's formulation on `process` (losses.effective_weighting) at the log-SNRs `lam` (a NumPy
  grid), normalised to integrate to 1 over it: uniform and importance-sampled t give the same one (importance sampling
  keeps the expected loss). Non-finite values count as 0 (a schedule's log-SNR has no derivative at its last grid
  point)."""
  t_min = process.index_to_t(0) if isinstance(process, Schedule) else process.t_min
  w = losses.effective_weighting(process, time_sampling(config) or Uniform(t_min), config.training.weighting,
                                 config.diffusion.prediction, config.training, jnp.asarray(lam, jnp.float32))
  w = np.where(np.isfinite(w), np.asarray(w, np.float64), 0.0)
  return w / np.trapezoid(w, lam)


def time_sampling(config):
  """The training-time distribution of config.training.t_sampling (timesteps.py) with its parameters; None for
  uniform and importance sampling, which the process and the loss draw themselves."""
  tc = config.training
  makers = {"logit_normal": lambda: get_time_sampling("logit_normal", m=tc.logit_normal_m, s=tc.logit_normal_s),
            "mode": lambda: get_time_sampling("mode", s=tc.mode_scale),
            "lognormal_sigma": lambda: get_time_sampling("lognormal_sigma", p_mean=tc.p_mean, p_std=tc.p_std)}
  return makers[tc.t_sampling]() if tc.t_sampling in makers else None


def init_state(config, model, tx, rng):
  k_init, k_train = jax.random.split(rng)
  x = jnp.zeros((1, *latent.diffusion_shape(config)))
  y = jnp.zeros((1,), jnp.int32) if config.model.num_classes else None
  if text.is_text(config):  # y: token ids
    y = jnp.zeros((1, config.text.encoder.max_position_embeddings), jnp.int32)
  return new_state(model.init(k_init, x, jnp.ones((1,)), y)["params"], tx, k_train)


def new_state(params, tx, rng):
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params, opt_state=tx.init(params), rng=rng)


def sharded_abstract(init, mesh):
  """(the abstract train state of init(rng), placed by parallel.state_shardings; those shardings)."""
  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  shardings = parallel.state_shardings(abstract, mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings), shardings


def create_or_restore(config, directory, init, mesh, keep=2, section="model", resume_log=None):
  """The train state from the newest intact checkpoint in `directory` (whose config.`section` must match), or
  init(rng); placed on the mesh with parallel.state_shardings, whatever mesh and process count saved it. On a resume
  with resume_log (a JSON path) set, the config fields that differ from the checkpoint's are logged and recorded
  there (record_drift). Returns (state, checkpoint manager)."""
  abstract, shardings = sharded_abstract(init, mesh)
  init = jax.jit(init, out_shardings=shardings)
  total, per_device = parallel.bytes_per_device(abstract)
  logging.info("Train state: %.2f MB, %.2f MB per device (mesh data=%d x fsdp=%d, %d process(es))", total / 1e6,
               per_device / 1e6, mesh.shape["data"], mesh.shape["fsdp"], jax.process_count())
  mngr = checkpoint.manager(directory, keep)
  restored = checkpoint.restore(mngr, abstract, config, section=section)
  if restored is None:
    return init(jax.random.PRNGKey(config.seed)), mngr
  state, saved_config = restored
  logging.info("Resumed from step %d in %s", int(state.step), directory)
  if resume_log:
    record_drift(resume_log, int(state.step), checkpoint.config_diffs(saved_config, config))
  return state, mngr


def record_drift(path, step, diffs):
  """Logs each config field that differs from the resumed checkpoint's (old -> new) and appends {step, changes} to
  the JSON list at `path` (WORKDIR/resume_log.json; report.md shows it)."""
  if not diffs:
    return
  for k, (old, new) in diffs.items():
    logging.warning("Resuming step %d with %s changed: %r -> %r", step, k, old, new)
  if jax.process_index() == 0:
    log = json.load(open(path)) if os.path.exists(path) else []
    log.append(dict(step=step, time=time.strftime("%Y-%m-%d %H:%M:%S"),
                    changes={k: dict(checkpoint=old, now=new) for k, (old, new) in diffs.items()}))
    with open(path + ".tmp", "w") as f:
      json.dump(log, f, indent=1)
    os.replace(path + ".tmp", path)


def load_params(config, workdir, mesh):
  """The (EMA, if config.sample.use_ema) parameters of the workdir's latest checkpoint."""
  model, _ = setup(config)
  tx = model_optimizer(config)
  path = os.path.join(workdir, "checkpoints")
  state = restore_latest(config, path, lambda rng: init_state(config, model, tx, rng), mesh,
                         f"No checkpoint found in {path}; train first with --mode=train")
  return state.ema_params if config.sample.use_ema else state.params


GUIDE_SECTIONS = ("model", "optim", "training", "text")  # taken from the guide's checkpoint: its network and state


def guide_workdir(spec):
  """(workdir, step or None) of run option guide=WORKDIR[:step]."""
  return tuple(spec.rsplit(":", 1)) if re.fullmatch(r".+:\d+", spec) else (spec, None)


def guide_checkpoint(spec):
  """(checkpoint manager, step) of run option guide=WORKDIR[:step] (the newest step without one); FileNotFoundError
  naming what exists when there is no such checkpoint."""
  workdir, step = guide_workdir(spec)
  directory = os.path.join(workdir, "checkpoints")
  steps = checkpoint.manager(directory).all_steps() if os.path.isdir(directory) else []
  if not steps:
    raise FileNotFoundError(f"guide={spec}: no checkpoint in {directory}; train the guiding model there first (e.g. "
                            "--config=configs/digits_small.py for the digits)")
  if step is not None and int(step) not in steps:
    raise FileNotFoundError(f"guide={spec}: no step {step} in {directory}; its steps: "
                            + ", ".join(map(str, sorted(steps))))
  return checkpoint.manager(directory), max(steps) if step is None else int(step)


def guide_shared(key):
  """The config fields a guide must share with the model it guides: the process, the data's shape, the conditioning
  (classes, latent space, text input) and a text model's tokenizer."""
  text_input = key.startswith("text.") and not key.startswith(("text.encoder.", "text.train_encoder"))
  return (key.startswith("diffusion.") or key in ("data.image_size", "data.channels", "model.num_classes",
                                                  "model.latent", "model.context_dim") or text_input)


def check_guide(config, spec, saved):
  """Raises, naming the fields, when the guide's saved config differs from `config` in what it must share."""
  diffs = checkpoint.config_diffs(saved, config, guide_shared)
  if diffs:
    raise ValueError(f"guide={spec} cannot guide this model: autoguidance needs the same process, data shape and "
                     "conditioning, and they differ:\n  " + "\n  ".join(
                         f"{k}: guide has {a!r}, this model {b!r}" for k, (a, b) in diffs.items()))


def load_guide(config, spec, mesh):
  """(network, parameters: EMA if config.sample.use_ema) of the weaker model of autoguidance (Karras et al. 2024), run
  option guide=WORKDIR[:step]: another run, or an earlier checkpoint of this one. Its network, optimizer and training
  sections come from its checkpoint; its process, data shape and conditioning must be this model's (check_guide)."""
  mngr, step = guide_checkpoint(spec)
  saved = checkpoint.saved_config(mngr, step)
  check_guide(config, spec, saved)
  guide_config = config.copy_and_resolve_references()
  with guide_config.unlocked():
    for section in GUIDE_SECTIONS:
      if section in saved:
        guide_config[section] = ml_collections.ConfigDict(saved[section])
  model, _ = setup(guide_config)
  tx = model_optimizer(guide_config)
  abstract, _ = sharded_abstract(lambda rng: init_state(guide_config, model, tx, rng), mesh)
  try:
    state, _ = checkpoint.restore(mngr, abstract, guide_config, step=step)
  except ValueError as e:
    raise ValueError(f"guide={spec} (step {step}) cannot be restored: {e}") from None
  logging.info("Autoguidance by %s, step %d", spec, step)
  return model, state.ema_params if config.sample.use_ema else state.params


def restore_latest(config, directory, init, mesh, missing_message, section="model"):
  """The latest checkpoint's train state in `directory`; FileNotFoundError(missing_message) when there is none."""
  if checkpoint.manager(directory).latest_step() is None:
    raise FileNotFoundError(missing_message)
  return create_or_restore(config, directory, init, mesh, section=section)[0]


def classifier_dir(config, workdir):
  return config.classifier.workdir or os.path.join(workdir, "classifier")


def get_classifier(config):
  return NoisyClassifier(**config.classifier.model, kernels=config.model.kernels)


def init_classifier_state(config, clf, tx, rng):
  k_init, k_train = jax.random.split(rng)
  s = config.data.image_size
  return new_state(clf.init(k_init, jnp.zeros((1, s, s, config.data.channels)), jnp.zeros((1,)))["params"], tx, k_train)


def load_classifier(config, workdir, mesh):
  """(classifier module, its EMA parameters) from the classifier directory's latest checkpoint."""
  clf, tx = get_classifier(config), make_optimizer(config.classifier.optim)
  path = os.path.join(classifier_dir(config, workdir), "checkpoints")
  state = restore_latest(config, path, lambda rng: init_classifier_state(config, clf, tx, rng), mesh,
                         f"No classifier checkpoint in {path}: classifier guidance (run option s=) needs a trained "
                         "classifier; train one with --mode=train_classifier, or set config.classifier.workdir",
                         section="classifier.model")
  return clf, state.ema_params


def autoencoder_dir(config, workdir):
  return config.autoencoder.workdir or os.path.join(workdir, "autoencoder")


def get_autoencoder(config):
  return AutoencoderKL(out_channels=config.data.channels, **config.autoencoder.model, kernels=config.model.kernels,
                       remat=config.model.get("remat", "none"))


def init_autoencoder_state(config, ae, tx, rng):
  k_init, k_train = jax.random.split(rng)
  s = config.data.image_size
  x = jnp.zeros((1, s, s, config.data.channels))
  return new_state(ae.init(k_init, x, jax.random.PRNGKey(0))["params"], tx, k_train)


def load_autoencoder(config, workdir, mesh):
  """(autoencoder module, its EMA parameters, latent_scale.json) from the autoencoder directory."""
  ae, tx = get_autoencoder(config), make_optimizer(config.autoencoder.optim)
  path = autoencoder_dir(config, workdir)
  state = restore_latest(config, os.path.join(path, "checkpoints"),
                         lambda rng: init_autoencoder_state(config, ae, tx, rng), mesh,
                         f"No autoencoder checkpoint in {path}/checkpoints: latent diffusion needs a trained "
                         "autoencoder; train one with --mode=train_autoencoder, or set config.autoencoder.workdir",
                         section="autoencoder.model")
  with open(os.path.join(path, "latent_scale.json")) as f:
    return ae, state.ema_params, json.load(f)


def load_latents(config, workdir, mesh):
  """The Latents of a latent config (None otherwise), checked against the diffusion model's input shape."""
  if not latent.is_latent(config):
    return None
  autoencoder, params, stats = load_autoencoder(config, workdir, mesh)
  if tuple(stats["latent_shape"]) != latent.diffusion_shape(config):
    raise ValueError(f"The autoencoder's latents have shape {tuple(stats['latent_shape'])}, but the diffusion model "
                     f"is configured for {latent.diffusion_shape(config)} (data.image_size / 2^(levels - 1) and "
                     "autoencoder.model.latent_channels); retrain the autoencoder or fix the config")
  return latent.Latents(autoencoder, params, stats["scale_factor"])
