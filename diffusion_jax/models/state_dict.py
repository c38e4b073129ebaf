"""PyTorch state dicts ({key: array}) onto flax parameter trees, by a function naming each parameter's key: the one
mapping behind every weight converter (diffusers U-Nets and autoencoders, transformers' CLIP text encoder)."""
import json
import os

import numpy as np
from flax import traverse_util


def to_flax(value, leaf_shape, leaf_name):
  """A torch tensor's layout to flax's: conv [O, I, kh, kw] -> [kh, kw, I, O]; linear [O, I] -> [I, O]; embeddings
  [N, C] and 1-d tensors as they are."""
  if leaf_name == "embedding" or value.ndim == 1:
    return value
  if value.ndim == 4 and len(leaf_shape) == 2:  # a 1x1 conv stored for a linear layer (older checkpoints)
    value = value[:, :, 0, 0]
  return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T


def from_state_dict(state_dict, abstract_params, key, strict=True):
  """The flax parameter tree (shapes from abstract_params) from `state_dict`, `key(path)` naming the key of each
  parameter path. Raises listing missing keys (and, when strict, unexpected ones), or naming the parameter whose
  shape differs."""
  state_dict = {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
  flat = traverse_util.flatten_dict(abstract_params)
  keys = {path: key(path) for path in flat}
  missing = sorted(k for k in keys.values() if k not in state_dict)
  unexpected = sorted(set(state_dict) - set(keys.values())) if strict else []
  if missing or unexpected:
    raise ValueError(f"The state dict does not match the config's network: missing {len(missing)} key(s) {missing}"
                     + (f"; unexpected {len(unexpected)} key(s) {unexpected}" if strict else ""))
  out = {}
  for path, leaf in flat.items():
    value = to_flax(state_dict[keys[path]], leaf.shape, path[-1])
    if value.shape != leaf.shape:
      raise ValueError(f"Parameter {keys[path]}: checkpoint shape {state_dict[keys[path]].shape} gives "
                       f"{value.shape}, the network needs {leaf.shape} (flax {'/'.join(path)})")
    out[path] = value
  return traverse_util.unflatten_dict(out)


def hf_checkpoint(directory, kind, hint=""):
  """(config.json as a dict, the path of model.safetensors) of a local Hugging Face directory; a missing directory or
  file raises FileNotFoundError naming it, followed by `hint` (which model to fetch and where to point the config)."""
  if not directory or not os.path.isdir(directory):
    raise FileNotFoundError(f"{kind} weights directory {directory!r} not found" + (f": {hint}" if hint else ""))
  hint = f"; {hint}" if hint else ""
  paths = [os.path.join(directory, f) for f in ("config.json", "model.safetensors")]
  for path in paths:
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: a {kind} directory holds config.json and model.safetensors{hint}")
  with open(paths[0]) as f:
    return json.load(f), paths[1]
