"""Orbax checkpoints of the whole train state (params, EMA, optimizer, step, RNG) plus the config that made them.
Orbax writes each step to a temporary directory and renames it, so a kill never leaves a half-written step; a step
damaged afterwards (an interrupted copy or upload, a full disk) is moved aside to `corrupt-STEP` and the newest
intact older step is restored instead."""
import json
import logging as py_logging
import os
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def manager(directory, keep=2):
  os.makedirs(directory, exist_ok=True)
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
      item_names=("state", "config"))


def save(mngr, step, state, config):
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          config=ocp.args.JsonSave(json.loads(config.to_json()))))


SHAPE_FIELDS = ("data.image_size", "data.channels")  # besides every field of the network's section but `free`
# what the diffusion network was trained on and to predict: its path (and the network time it maps t to) and target
PROCESS_FIELDS = ("diffusion.sde", "diffusion.schedule", "diffusion.num_timesteps", "diffusion.prediction",
                  "diffusion.zero_terminal_snr")


def config_diffs(saved, config, field=lambda k: True, new_fields=False):
  """{field: (checkpoint's value, config's value)} for the flattened config fields that differ and pass `field`.
  A field added to the code since the checkpoint (absent from it) counts only with new_fields, and then only when
  set (not False, 0, "")."""
  now, then = _flat(json.loads(config.to_json())), _flat(saved)
  return {k: (then.get(k), now.get(k)) for k in sorted(set(now) | set(then))
          if field(k) and now.get(k) != then.get(k) and (k in then or (new_fields and now.get(k)))}


def check_compatible(saved, config, section="model"):
  """Raises with the differing fields when the checkpoint's network (config.`section`) or input shape differs."""
  text = section == "model" and config.model.get("context_dim")  # a text model's encoder is part of its network
  # change no parameter: resume with any value
  free = (section + ".dropout", section + ".dtype", "model.kernels", "model.remat")
  shape_field = lambda k: ((k.startswith(section + ".") and k not in free) or k in SHAPE_FIELDS
                           or (text and k.startswith("text.encoder.")) or (section == "model" and k in PROCESS_FIELDS))
  diffs = config_diffs(saved, config, shape_field, new_fields=True)
  if diffs:
    raise ValueError("The config does not match the checkpoint's model:\n  " + "\n  ".join(
        f"{k}: checkpoint has {a!r}, config has {b!r}" for k, (a, b) in diffs.items()))


class CorruptCheckpoint(RuntimeError):
  """A checkpoint step that cannot be read back (missing files, truncated arrays, unreadable metadata)."""


def _reason(e):
  """The innermost cause of an orbax / TensorStore error, on one line (not the several-kB TensorStore spec)."""
  while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
    e = e.__cause__ or e.__context__
  line = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}" if str(e).strip() else type(e).__name__
  return line if len(line) <= 240 else line[:237] + "..."


_FAILED = set()  # step directories whose restore failed in this process


def _is_read_echo(exc):
  """Whether an exception echoes a failed restore: TensorStore reads still in flight when orbax's event loop closed
  (`RuntimeError: Event loop is closed`), or the errors of read tasks nobody awaited any more (they name the step)."""
  return ((isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed")
          or any(d + os.sep in str(exc) for d in _FAILED))


def _drop_read_echoes():
  """Drops the echoes of failed restores (_is_read_echo), which arrive later and from other threads as unraisable
  exceptions and asyncio's "exception was never retrieved": a dozen tracebacks and TensorStore specs about nothing.
  Every other unraisable exception and asyncio record passes. Installed once per process, before the first read."""
  if getattr(sys.unraisablehook, "drops_read_echoes", False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_read_echo(unraisable.exc_value):
      previous(unraisable)
  hook.drops_read_echoes = True
  sys.unraisablehook = hook
  py_logging.getLogger("asyncio").addFilter(lambda r: not (r.exc_info and _is_read_echo(r.exc_info[1])))


STATE_FIELDS = ("optim.", "text.train_encoder")  # config fields that shape the optimizer state
STRUCTURE_ERRORS = ("Structure mismatch", "tree structures do not match")  # orbax's words for a tree of other keys


def saved_config(mngr, step):
  """The config (a dict) saved with a checkpoint step."""
  return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def restore_step(mngr, step, abstract_state, config, section="model"):
  """(train state, saved config) of one step, checked against config.`section`; CorruptCheckpoint when unreadable,
  ValueError when the config's network or optimizer state differs from the checkpoint's."""
  step_dir = os.path.join(str(mngr.directory), str(step))
  _drop_read_echoes()  # before reading: the first echoes may come before the error
  try:
    saved = saved_config(mngr, step)
  except Exception as e:  # orbax raises many types (ValueError, FileNotFoundError, JSONDecodeError, ...)
    _FAILED.add(step_dir)
    raise CorruptCheckpoint(f"{step_dir}: cannot read its config: {_reason(e)}") from e
  check_compatible(saved, config, section)
  try:
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))["state"]
  except Exception as e:
    reason = _reason(e)
    if any(m in reason for m in STRUCTURE_ERRORS):  # intact, but this config builds another optimizer state
      diffs = config_diffs(saved, config, lambda k: k.startswith(STATE_FIELDS))
      raise ValueError(f"Checkpoint {step_dir} holds another train-state structure than this config builds "
                       f"({reason[:150]}); differing optimizer settings: "
                       + (", ".join(f"{k}: checkpoint has {a!r}, config has {b!r}" for k, (a, b) in diffs.items())
                          or "none found") + ". Resume with the checkpoint's settings, or use a new workdir") from e
    _FAILED.add(step_dir)
    raise CorruptCheckpoint(f"{step_dir}: cannot restore the train state: {reason}") from e
  return state, saved


def _all_processes_ok(ok):
  """Whether `ok` holds on every process. Damaged files that every process reads fail everywhere alike; a process
  that fails alone, on its own shards, leaves the others in orbax's restore barrier until its timeout."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def move_aside(mngr, step):
  """Renames step's directory to corrupt-STEP (corrupt-STEP-2, ... if taken), never deleting it; returns the path."""
  directory = str(mngr.directory)
  dst, n = os.path.join(directory, f"corrupt-{step}"), 1
  if jax.process_index() == 0:
    while os.path.exists(dst):
      n += 1
      dst = os.path.join(directory, f"corrupt-{step}-{n}")
    os.rename(os.path.join(directory, str(step)), dst)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"checkpoint moved aside {step}")
  mngr.reload()
  return dst


def restore(mngr, abstract_state, config, step=None, section="model"):
  """(train state, saved config) of the given step, or of the newest step that can be restored onto the shardings
  of `abstract_state`; the damaged newer steps are logged in one line each and moved aside (move_aside). None when
  there is no checkpoint; RuntimeError naming every step tried, with nothing moved, when none is intact."""
  if step is not None:
    return restore_step(mngr, step, abstract_state, config, section)
  damaged = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      restored, error = restore_step(mngr, step, abstract_state, config, section), None
    except CorruptCheckpoint as e:
      restored, error = None, e
    if _all_processes_ok(error is None):
      for bad, reason in damaged:
        logging.warning("Checkpoint step %d is damaged (%s); moved it aside to %s and resumed from step %d", bad,
                        reason, move_aside(mngr, bad), step)
      return restored
    damaged.append((step, str(error) if error else "another process could not read its part"))
  if damaged:
    raise RuntimeError(f"No intact checkpoint in {mngr.directory}; tried:\n  " +
                       "\n  ".join(f"step {s}: {r}" for s, r in damaged) +
                       "\nRestore the steps from a copy, or move them away to start afresh.")
  return None
