"""Training: a jitted train step on the (data, fsdp) mesh of every process's devices (parallel.py), EMA, orbax
checkpoints that are resumed automatically (onto any mesh), clu metric writers, a tqdm progress bar, sample grids."""
import json
import os
import time

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from tqdm import tqdm

from diffusion_jax import checkpoint, latent, parallel, preemption, text
from diffusion_jax.data import get_dataset
from diffusion_jax.guidance import drop_labels
from diffusion_jax.images import save_grid
from diffusion_jax.losses import T_SAMPLINGS, diffusion_loss, get_weighting
from diffusion_jax.parametrization import check_prediction
from diffusion_jax.models import get_model
from diffusion_jax.sample import generate_samples
from diffusion_jax.schedules import Schedule, get_schedule
from diffusion_jax.sde import VPSDE, sde_from_config

OPTIMIZERS = ("adam", "adamw")


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: dict
  ema_params: dict
  opt_state: optax.OptState
  rng: jnp.ndarray


def make_optimizer(optim):
  """Adam / AdamW with linear warmup to a constant rate and global-norm gradient clipping (Ho et al. 2020)."""
  if optim.optimizer not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {optim.optimizer!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
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


def setup(config):
  """(model, process) for a config, validating the names it uses: the process is the discrete schedule
  diffusion.schedule, or with diffusion.sde set the SDE of continuous-time training."""
  d = config.diffusion
  check_prediction(d.prediction)
  get_weighting(config.training.weighting)
  if config.training.t_sampling not in T_SAMPLINGS:
    raise ValueError(f"Unknown training.t_sampling {config.training.t_sampling!r}; valid: {', '.join(T_SAMPLINGS)}")
  if not d.sde:
    return get_model(config), get_schedule(d.schedule, d.num_timesteps)
  process = sde_from_config(d)
  if d.prediction == "v" and type(process) is not VPSDE:
    raise ValueError(f"prediction 'v' assumes alpha^2 + sigma^2 = 1, which only the vp SDE has (got {d.sde!r}); "
                     "use eps or x0")
  return get_model(config), process


def init_state(config, model, tx, rng):
  k_init, k_train = jax.random.split(rng)
  x = jnp.zeros((1, *latent.diffusion_shape(config)))
  y = jnp.zeros((1,), jnp.int32) if config.model.num_classes else None
  if text.is_text(config):  # y: token ids
    y = jnp.zeros((1, config.text.encoder.max_position_embeddings), jnp.int32)
  return new_state(model.init(k_init, x, jnp.zeros((1,)), y)["params"], tx, k_train)


def new_state(params, tx, rng):
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params, opt_state=tx.init(params), rng=rng)


def apply_gradients(state, grads, tx, ema_decay):
  """One optimizer step, then the EMA of the parameters with warm-up decay min(ema_decay, (1 + step) / (10 + step))."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
  ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
  return state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)


def log_snr_edges(process, num_bins):
  """num_bins + 1 equal-width bin edges over the log-SNR range of the training times, lowest (noisiest) first."""
  t_min = process.index_to_t(0) if isinstance(process, Schedule) else process.t_min
  return np.linspace(float(process.log_snr(1.0)), float(process.log_snr(t_min)), num_bins + 1)


def loss_by_bin(log_snr, loss, edges):
  """(sum, count) of the per-example loss in each log-SNR bin; out-of-range values go to the end bins."""
  b = jnp.clip(jnp.searchsorted(jnp.asarray(edges[1:-1]), log_snr), 0, len(edges) - 2)
  zeros = jnp.zeros(len(edges) - 1)
  return zeros.at[b].add(loss), zeros.at[b].add(1.0)


def summarize_bins(edges):
  """fit's summary of a log interval: means of the scalar metrics, and the eps-equivalent loss in each log-SNR bin
  (`loss_by_log_snr/[lo,hi)`, bins without examples left out)."""
  def summarize(sums, n):
    out = mean_scalars({k: v for k, v in sums.items() if np.ndim(v) == 0}, n)
    for lo, hi, total, count in zip(edges[:-1], edges[1:], sums["bin_sum"], sums["bin_count"]):
      if count:
        out[bin_name(lo, hi)] = float(total / count)
    return out
  return summarize


def bin_name(lo, hi):
  return f"loss_by_log_snr/[{lo:+.1f},{hi:+.1f})"


def training_log(path, edges):
  """An on_log for fit that keeps every log interval's summary in a JSON file across resumes (WORKDIR/
  training_log.json: the log-SNR bin edges, and per record the step, wall seconds, scalar metrics and the per-bin
  eps-equivalent losses), which experiments read for loss tables and loss-by-SNR plots."""
  log = json.load(open(path)) if os.path.exists(path) else {"log_snr_edges": [float(e) for e in edges], "records": []}
  start = time.time() - (log["records"][-1]["seconds"] if log["records"] else 0.0)

  def on_log(done, logged):
    record = dict(step=done, seconds=round(time.time() - start, 2), **{k: v for k, v in logged.items() if "/" not in k},
                  loss_by_log_snr=[logged.get(bin_name(lo, hi)) for lo, hi in zip(edges[:-1], edges[1:])])
    log["records"] = [r for r in log["records"] if r["step"] < done] + [record]
    if jax.process_index() == 0:
      with open(path + ".tmp", "w") as f:
        json.dump(log, f)
      os.replace(path + ".tmp", path)
  return on_log


def make_train_step(config, model, process, tx):
  """(state, batch) -> (state, metrics): one optimizer step on the weighted loss; metrics include the eps-equivalent
  loss summed and counted in config.training.loss_bins log-SNR bins."""
  tc = config.training
  edges = log_snr_edges(process, tc.loss_bins)
  null = text.null_condition(config) if tc.p_uncond else None

  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    y = batch.get("label")
    if y is not None and config.training.p_uncond:
      y = drop_labels(jax.random.fold_in(rng, 7), y, config.training.p_uncond, null)
    loss_fn = lambda p: diffusion_loss(model.apply, p, process, batch["image"], y, rng,
                                       prediction=config.diffusion.prediction, weighting=tc.weighting, options=tc,
                                       importance=tc.t_sampling == "importance")
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    bin_sum, bin_count = loss_by_bin(aux["log_snr"], aux["eps_mse"], edges)
    return apply_gradients(state, grads, tx, tc.ema_decay), {
        "loss": loss, "eps_mse": jnp.mean(aux["eps_mse"]), "grad_norm": optax.tree.norm(grads),
        "bin_sum": bin_sum, "bin_count": bin_count}
  return train_step


def host_batch(config, dataset, step, rows=slice(None)):
  """This process's rows of the global batch of a step, as a dict of host arrays; a text model's labels become the
  token ids of captions."""
  x, y = dataset.batch(config.seed, step, config.training.batch_size, rows)
  if text.is_text(config):
    y = text.get_text(config).training_ids(y, config.seed, step, config.training.batch_size, rows)
  return {"image": x, "label": y} if config.model.num_classes else {"image": x}


def create_or_restore(config, directory, init, mesh, keep=2, section="model", resume_log=None):
  """The train state from the newest intact checkpoint in `directory` (whose config.`section` must match), or
  init(rng); placed on the mesh with parallel.state_shardings, whatever mesh and process count saved it. On a resume
  with resume_log (a JSON path) set, the config fields that differ from the checkpoint's are logged and recorded
  there (record_drift). Returns (state, checkpoint manager)."""
  abstract = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
  shardings = parallel.state_shardings(abstract, mesh)
  init = jax.jit(init, out_shardings=shardings)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
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


def write_training_grid(config, model, process, state, mesh, path, latents=None):
  """100 samples from the EMA parameters: DDIM-50 on discrete / VP models, probability-flow Heun-25 otherwise."""
  name, steps, kw = ("ddim", 50, {}) if config.diffusion.sde in ("", "vp") else ("ode", 25, {"solver": "heun"})
  images, _, _, _ = generate_samples(config, model, process, state.ema_params, mesh, name, steps, 100,
                                     jax.random.PRNGKey(config.seed + 2), latents=latents, **kw)
  if jax.process_index() == 0:
    save_grid(images, path)


def mean_scalars(sums, n):
  return {k: float(v) / n for k, v in sums.items()}


def fit(config, tcfg, state, mngr, step_fn, batch_fn, mesh, logdir, after_step=None, desc="train",
        summarize=mean_scalars, on_log=None):
  """The training loop: runs step_fn(state, batch) up to tcfg.num_steps, where batch_fn(step, rows) gives this
  process's rows of the global batch (a dict); every tcfg.log_every steps logs
  summarize(metrics summed over the interval, steps) (default: their means) and calls on_log(done, logged);
  checkpoints every tcfg.checkpoint_every steps and on exit (errors, Ctrl-C), stops on a non-finite loss without
  saving it, and calls after_step(done, state, writer). On SIGTERM / SIGINT (preemption.StopRequests) every process
  stops after the same step (the next one: the request rides on its batch), saves it and raises
  preemption.Preempted. Returns the final state."""
  writer = (metric_writers.create_default_writer(logdir) if jax.process_index() == 0
            else metric_writers.MultiWriter([]))  # metrics are logged and written by process 0 only
  shardings = parallel.state_shardings(state, mesh)

  def step_and_stop(state, batch):  # the stop requests of every process's rows, reduced: all stop after one step
    batch = dict(batch)
    stop = jnp.max(batch.pop("stop_requested"))
    return (*step_fn(state, batch), stop)
  jitted = jax.jit(step_and_stop, in_shardings=(shardings, parallel.batch_sharded(mesh)),
                   out_shardings=(shardings, parallel.replicated(mesh), parallel.replicated(mesh)), donate_argnums=0)
  rows = parallel.local_rows(tcfg.batch_size, mesh)
  start = int(state.step)
  pbar = tqdm(total=tcfg.num_steps, initial=start, desc=desc, mininterval=2.0, disable=jax.process_index() > 0)
  last_save, t0, seen, diverged, stopped, sums, n = start, time.time(), 0, False, False, None, 0
  with preemption.StopRequests(config.job.grace_s) as stops:
    try:
      for step in range(start, tcfg.num_steps):
        batch = dict(batch_fn(step, rows), stop_requested=np.full(rows.stop - rows.start, stops.requested, np.int32))
        state, metrics, stop = jitted(state, parallel.shard_local_batch(batch, mesh, tcfg.batch_size))
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
          diverged = True
          raise FloatingPointError(
              f"Training loss became {loss} at step {step}; stopped without saving this state. The last good "
              f"checkpoint (step {mngr.latest_step()}) is in {mngr.directory}; lower the learning rate or enable "
              "gradient clipping (grad_clip).")
        seen, n, done = seen + tcfg.batch_size, n + 1, step + 1
        sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
        if done % tcfg.log_every == 0 or done == tcfg.num_steps:
          ips = seen / (time.time() - t0)
          logged = summarize(jax.device_get(sums), n)
          writer.write_scalars(done, {**logged, "images_per_sec": ips})
          pbar.set_postfix(loss=f"{logged['loss']:.4f}", img_s=f"{ips:.0f}")
          if on_log:
            on_log(done, logged)
          t0, seen, sums, n = time.time(), 0, None, 0
        pbar.update(1)
        if done % tcfg.checkpoint_every == 0:
          checkpoint.save(mngr, done, state, config)
          last_save = done
        if int(stop):  # every process: the same step, and the same grace period from here
          stopped = True
          stops.arm()
          break
        if after_step:
          after_step(done, state, writer)
    finally:  # also on a signal, Ctrl-C or an error: keep the progress made, unless the state diverged
      pbar.close()
      if not diverged and int(state.step) > last_save:
        checkpoint.save(mngr, int(state.step), state, config)
      mngr.wait_until_finished()
      writer.flush()
  if stopped or stops.requested:  # also a signal during the last step: the run was asked to end
    raise preemption.Preempted(f"Stopped on request at step {int(state.step)} of {tcfg.num_steps}; saved in "
                               f"{mngr.directory}. Run the same command to resume.")
  return state


def train(config, workdir, mesh=None):
  """Trains to config.training.num_steps, resuming from the workdir; returns the final TrainState."""
  mesh = mesh or parallel.mesh_for(config)
  parallel.check_batch(config.training.batch_size, mesh)
  model, process = setup(config)
  tx = model_optimizer(config)
  dataset = get_dataset(config, "train", parallel.local_rows(config.training.batch_size, mesh))
  latents = latent.load(config, workdir, mesh)
  if latents:
    dataset = latent.encode_dataset(latents, dataset, config.training.batch_size)
  state, mngr = create_or_restore(config, os.path.join(workdir, "checkpoints"),
                                  lambda rng: init_state(config, model, tx, rng), mesh,
                                  config.training.keep_checkpoints, resume_log=os.path.join(workdir, "resume_log.json"))
  every = config.training.sample_every
  edges = log_snr_edges(process, config.training.loss_bins)

  def sample_grid(done, state, _):
    if every and done % every == 0:
      write_training_grid(config, model, process, state, mesh,
                          os.path.join(workdir, "samples", f"train_{done:07d}.png"), latents)
  return fit(config, config.training, state, mngr, make_train_step(config, model, process, tx),
             lambda step, rows: host_batch(config, dataset, step, rows), mesh, os.path.join(workdir, "logs"),
             sample_grid, summarize=summarize_bins(edges),
             on_log=training_log(os.path.join(workdir, "training_log.json"), edges))


def load_params(config, workdir, mesh):
  """The (EMA, if config.sample.use_ema) parameters of the workdir's latest checkpoint."""
  model, _ = setup(config)
  tx = model_optimizer(config)
  path = os.path.join(workdir, "checkpoints")
  state = restore_latest(config, path, lambda rng: init_state(config, model, tx, rng), mesh,
                         f"No checkpoint found in {path}; train first with --mode=train")
  return state.ema_params if config.sample.use_ema else state.params


def restore_latest(config, directory, init, mesh, missing_message, section="model"):
  """The latest checkpoint's train state in `directory`; FileNotFoundError(missing_message) when there is none."""
  if checkpoint.manager(directory).latest_step() is None:
    raise FileNotFoundError(missing_message)
  return create_or_restore(config, directory, init, mesh, section=section)[0]
