"""Networks by name, and the bridge from a network to the `model_fn(x_t, t, y=None)` contract of the samplers."""
import dataclasses

from diffusion_jax.latent import diffusion_shape
from diffusion_jax.models.ncsnpp import NCSNpp
from diffusion_jax.models.unet import UNet
from diffusion_jax.registry import Registry

MODELS = Registry("model")
MODELS.register("unet")(UNet)
MODELS.register("ncsnpp")(NCSNpp)


def get_model(config):
  """Builds `config.model.name` with the remaining `config.model` fields; output channels follow the data (or the
  latents, with model.latent)."""
  cls = MODELS.get(config.model.name)
  kwargs = {k: v for k, v in config.model.items() if k not in ("name", "latent")}
  valid = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "out_channels"}
  unknown = set(kwargs) - valid
  if unknown:
    raise ValueError(f"Unknown field(s) {sorted(unknown)} for model {config.model.name!r}; valid: "
                     f"{sorted(valid | {'latent'})}")
  return cls(out_channels=diffusion_shape(config)[-1], **kwargs)


def make_model_fn(model, params, process):
  """model_fn(x_t, t, y) for continuous t in (0, 1]: the network sees process.network_time(t) (the index t T - 1 for a
  discrete schedule, (N - 1) t or sigma_t for an SDE)."""
  def model_fn(x, t, y=None):
    return model.apply({"params": params}, x, process.network_time(t), y, train=False)
  return model_fn
