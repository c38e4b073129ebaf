"""Training: a jitted train step on the (data, fsdp) mesh of every process's devices (parallel.py), EMA, orbax
checkpoints that are resumed automatically (onto any mesh), clu metric writers, a tqdm progress bar, sample grids."""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metric_writers
from tqdm import tqdm

from diffusion_jax import build, checkpoint, latent, parallel, preemption, text
from diffusion_jax.data import get_dataset
from diffusion_jax.guidance import drop_labels
from diffusion_jax.images import save_grid
from diffusion_jax.losses import diffusion_loss
from diffusion_jax.models import remat
from diffusion_jax.models.kernels import get_kernels
from diffusion_jax.sample import generate_samples
from diffusion_jax.schedules import Schedule
from diffusion_jax.tables import plot_weightings

def apply_gradients(state, grads, tx, ema_decay):
  """One optimizer step, then the EMA of the parameters with warm-up decay min(ema_decay, (1 + step) / (10 + step))."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
  ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
  return state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)


def log_snr_edges(process, num_bins):
  """num_bins + 1 equal-width bin edges over the log-SNR range of the training times, lowest (noisiest) first."""
  t_min, t_max = (process.index_to_t(0), 1.0) if isinstance(process, Schedule) else (process.t_min, 1 - process.t_min)
  return np.linspace(float(process.log_snr(t_max)), float(process.log_snr(t_min)), num_bins + 1)


def write_effective_weighting(config, process, edges, workdir):
  """WORKDIR/weighting.json and weighting.png: the effective weighting w(lambda) of this run's formulation over the
  log-SNR range of its training times (losses.effective_weighting), normalised to integrate to 1."""
  lam = np.linspace(edges[0], edges[-1], 241)
  w = build.effective_weighting(config, process, lam)
  with open(os.path.join(workdir, "weighting.json"), "w") as f:
    json.dump({"log_snr": lam.tolist(), "weighting": w.tolist()}, f)
  plot_weightings({os.path.basename(os.path.normpath(workdir)): (lam, w)}, os.path.join(workdir, "weighting.png"))


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


def microbatches(batch, k):
  """The global batch as k microbatches [k, B / k, ...], microbatch j holding rows j, j + k, j + 2k, ...: with the
  per-device batch divisible by k, every device keeps its own rows (no data moves between devices)."""
  return jax.tree.map(lambda a: a.reshape(a.shape[0] // k, k, *a.shape[1:]).swapaxes(0, 1), batch)


def make_train_step(config, model, process, tx):
  """(state, batch) -> (state, metrics): one optimizer step on the weighted loss of the global batch; metrics include
  the eps-equivalent loss summed and counted in config.training.loss_bins log-SNR bins. With
  training.grad_accum_steps = k the batch is split into k microbatches (microbatches) whose gradients are summed
  inside the one compiled step (a lax.scan, or unrolled where the kernel set says a rolled backward pass is slow),
  then one optimizer and EMA update; each example's draws follow its global index, so k does not change them."""
  tc = config.training
  k = tc.grad_accum_steps
  edges = log_snr_edges(process, tc.loss_bins)
  null = text.null_condition(config) if tc.p_uncond else None
  times = build.time_sampling(config)
  rolled = get_kernels(config.model.kernels).rolled_backward

  def gradients(params, batch, rng):
    """(gradient of the microbatch's mean loss, (mean loss, summed eps_mse, bin sums, bin counts))."""
    y = batch.get("label")
    if y is not None and tc.p_uncond:
      y = drop_labels(jax.random.fold_in(rng, 7), y, tc.p_uncond, null, batch["index"])
    loss_fn = lambda p: diffusion_loss(model.apply, p, process, batch["image"], y, rng,
                                       prediction=config.diffusion.prediction, weighting=tc.weighting, options=tc,
                                       importance=tc.t_sampling == "importance", time_sampling=times,
                                       index=batch["index"])
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, (loss, jnp.sum(aux["eps_mse"]), *loss_by_bin(aux["log_snr"], aux["eps_mse"], edges))

  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    n = batch["image"].shape[0]
    batch = {**batch, "index": jnp.arange(n)}
    if k == 1:
      grads, (loss, eps_sum, bin_sum, bin_count) = gradients(state.params, batch, rng)
    else:
      micro = microbatches(batch, k)
      add = lambda total, mb: jax.tree.map(jnp.add, total, gradients(state.params, mb, rng))
      total = jax.tree.map(jnp.zeros_like, jax.eval_shape(gradients, state.params, jax.tree.map(lambda a: a[0], micro),
                                                          rng))
      if rolled:
        total, _ = jax.lax.scan(lambda t, mb: (add(t, mb), None), total, micro)
      else:
        for j in range(k):
          total = add(total, jax.tree.map(lambda a, j=j: a[j], micro))
      grads, (loss, eps_sum, bin_sum, bin_count) = jax.tree.map(lambda g: g / k, total[0]), total[1]
      loss = loss / k
    return apply_gradients(state, grads, tx, tc.ema_decay), {
        "loss": loss, "eps_mse": eps_sum / n, "grad_norm": optax.tree.norm(grads),
        "bin_sum": bin_sum, "bin_count": bin_count}
  return train_step


def check_accumulation(config, mesh):
  """training.grad_accum_steps must divide the per-device batch (training.batch_size over the mesh's devices)."""
  k, per_device = config.training.grad_accum_steps, config.training.batch_size // mesh.devices.size
  if k < 1 or per_device % k:
    valid = [d for d in range(1, per_device + 1) if per_device % d == 0]
    raise ValueError(f"training.grad_accum_steps={k} must divide the per-device batch of {per_device} "
                     f"(training.batch_size={config.training.batch_size} over {mesh.devices.size} devices); "
                     f"valid: {', '.join(map(str, valid))}")


def host_batch(config, dataset, step, rows=slice(None)):
  """This process's rows of the global batch of a step, as a dict of host arrays; a text model's labels become the
  token ids of captions."""
  x, y = dataset.batch(config.seed, step, config.training.batch_size, rows)
  if text.is_text(config):
    y = text.get_text(config).training_ids(y, config.seed, step, config.training.batch_size, rows)
  return {"image": x, "label": y} if config.model.num_classes else {"image": x}


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
                   out_shardings=(shardings, parallel.replicated(mesh), parallel.replicated(mesh)), donate_argnums=0,
                   compiler_options=remat.compiler_options(config.model.remat))
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
  check_accumulation(config, mesh)
  model, process = build.setup(config)
  tx = build.model_optimizer(config)
  dataset = get_dataset(config, "train", parallel.local_rows(config.training.batch_size, mesh))
  latents = build.load_latents(config, workdir, mesh)
  if latents:
    dataset = latent.encode_dataset(latents, dataset, config.training.batch_size)
  state, mngr = build.create_or_restore(config, os.path.join(workdir, "checkpoints"),
                                  lambda rng: build.init_state(config, model, tx, rng), mesh,
                                  config.training.keep_checkpoints, resume_log=os.path.join(workdir, "resume_log.json"))
  every = config.training.sample_every
  edges = log_snr_edges(process, config.training.loss_bins)
  if jax.process_index() == 0:
    write_effective_weighting(config, process, edges, workdir)

  def sample_grid(done, state, _):
    if every and done % every == 0:
      write_training_grid(config, model, process, state, mesh,
                          os.path.join(workdir, "samples", f"train_{done:07d}.png"), latents)
  return fit(config, config.training, state, mngr, make_train_step(config, model, process, tx),
             lambda step, rows: host_batch(config, dataset, step, rows), mesh, os.path.join(workdir, "logs"),
             sample_grid, summarize=summarize_bins(edges),
             on_log=training_log(os.path.join(workdir, "training_log.json"), edges))


