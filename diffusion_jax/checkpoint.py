"""Orbax checkpoints of the whole train state (params, EMA, optimizer, step, RNG) plus the config that made them;
orbax writes each step to a temporary directory and renames it, so a kill never leaves a half-written checkpoint."""
import json
import os

import orbax.checkpoint as ocp


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


def check_compatible(saved, config, section="model"):
  """Raises with the differing fields when the checkpoint's network (config.`section`) or input shape differs."""
  now = _flat(json.loads(config.to_json()))
  then = _flat(saved)
  text = section == "model" and now.get("model.context_dim")  # a text model's encoder is part of its network
  free = (section + ".dropout", section + ".dtype")  # change no parameter: a run may resume with other values
  shape_field = lambda k: ((k.startswith(section + ".") and k not in free) or k in SHAPE_FIELDS
                           or (text and k.startswith("text.encoder.")))
  newer_and_off = lambda k: k not in then and not now.get(k)  # a field added since the checkpoint, left off
  diffs = [f"{k}: checkpoint has {then.get(k)!r}, config has {now.get(k)!r}" for k in sorted(set(now) | set(then))
           if shape_field(k) and now.get(k) != then.get(k) and not newer_and_off(k)]
  if diffs:
    raise ValueError("The config does not match the checkpoint's model:\n  " + "\n  ".join(diffs))


def restore(mngr, abstract_state, config, step=None, section="model"):
  """Restores the latest (or given) step onto the shardings of `abstract_state`; None when there is none."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  path = os.path.join(str(mngr.directory), str(step))
  try:
    saved_config = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  except Exception as e:
    raise RuntimeError(f"Checkpoint {path} is corrupt or incomplete (cannot read its config): {e}") from e
  check_compatible(saved_config, config, section)
  try:
    return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))["state"]
  except Exception as e:
    raise RuntimeError(f"Checkpoint {path} is corrupt or incomplete (cannot restore the train state): {e}") from e
