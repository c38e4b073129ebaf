"""Networks by name, and the bridge from a network to the `model_fn(x_t, t, y=None)` contract of the samplers."""
import dataclasses

from absl import logging

from diffusion_jax.latent import diffusion_shape
from diffusion_jax.models.clip_text import CLIPTextConfig, CLIPTextModel, TextConditioned
from diffusion_jax.models.dit import DiT
from diffusion_jax.models.kernels import resolve
from diffusion_jax.models.ncsnpp import NCSNpp
from diffusion_jax.models.precondition import EDMPrecond
from diffusion_jax.models.remat import check_remat
from diffusion_jax.models.unet import UNet
from diffusion_jax.models.uvit import UViT
from diffusion_jax.registry import Registry

MODELS = Registry("model")
MODELS.register("unet")(UNet)
MODELS.register("ncsnpp")(NCSNpp)
MODELS.register("dit")(DiT)
MODELS.register("uvit")(UViT)


PRECONDITIONINGS = ("", "edm")
WRAPPER_FIELDS = ("name", "latent", "precondition")  # config.model fields that are not the network's own
# the fields every network's config.model section has (configs/base.py), with their defaults
COMMON = {"dtype": "float32", "kernels": "auto", "num_classes": 0, "remat": "none", "size": ""}


def get_model(config):
  """Builds `config.model.name` with the remaining `config.model` fields; output channels follow the data (or the
  latents, with model.latent). With model.context_dim > 0 the network is conditioned on text: a CLIP text encoder
  (config.text.encoder) in front of it, its classes named in captions rather than embedded. model.precondition="edm"
  wraps the whole in EDM's preconditioning (EDMPrecond, sigma_data = config.training.sigma_data)."""
  cls = MODELS.get(config.model.name)
  resolve(config.model.get("kernels", "auto"))  # an unknown kernel set fails here, before any tracing
  check_remat(config.model.get("remat", "none"))  # and so does an unknown remat policy
  precondition = config.model.get("precondition", "")
  if precondition not in PRECONDITIONINGS:
    raise ValueError(f"Unknown model.precondition {precondition!r}; valid: '' (none), edm")
  network = _network(config, cls, network_kwargs(config.model, cls))
  return EDMPrecond(network, config.training.sigma_data) if precondition == "edm" else network


def network_kwargs(model_config, cls):
  """The fields of config.model that network class `cls` takes. A section written for another registered network and
  switched by model.name (it holds that network's fields, e.g. --config.model.name=dit --config.model.size=S/2 on a
  U-Net config) passes only the COMMON fields, which every network's section has; the network's other fields keep its
  defaults. A field of no network, or a COMMON field the network lacks set to anything but its default, is refused."""
  kwargs = {k: v for k, v in model_config.items() if k not in WRAPPER_FIELDS}
  own = network_fields(cls)
  unknown = set(kwargs) - set().union(*(network_fields(MODELS.get(n)) for n in MODELS.names()))
  if unknown:
    raise ValueError(f"Unknown field(s) {sorted(unknown)} for model {model_config.name!r}; valid: "
                     f"{sorted(own | set(WRAPPER_FIELDS[1:]))}")
  unused = {k: v for k, v in kwargs.items() if k in COMMON and k not in own and v != COMMON[k]}
  if unused:
    raise ValueError(f"model {model_config.name!r} has no field(s) {sorted(unused)}: leave them at "
                     f"{ {k: COMMON[k] for k in unused} }")
  if kwargs.get("context_dim") and "context_dim" not in own:
    raise ValueError(f"model.context_dim={kwargs['context_dim']} (text conditioning) needs a network with "
                     f"cross-attention (unet); {model_config.name!r} takes class labels: set model.context_dim=0")
  switched = set(kwargs) - own - set(COMMON)
  if switched:
    logging.info("config.model was written for another network (fields %s); %s takes only %s from it",
                 sorted(switched), model_config.name, sorted(set(COMMON) & own))
    return {k: v for k, v in kwargs.items() if k in own and k in COMMON}
  return {k: v for k, v in kwargs.items() if k in own}


def network_fields(cls):
  """The config.model fields a network class takes (its dataclass fields but the ones get_model sets)."""
  return {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "out_channels"}


def _network(config, cls, kwargs):
  if not kwargs.get("context_dim"):
    return cls(out_channels=diffusion_shape(config)[-1], **kwargs)
  encoder = CLIPTextConfig.from_dict(dict(config.text.encoder))
  if encoder.hidden_size != kwargs["context_dim"]:
    raise ValueError(f"text.encoder.hidden_size={encoder.hidden_size} must equal model.context_dim="
                     f"{kwargs['context_dim']}: the U-Net attends to the text encoder's states")
  denoiser = cls(out_channels=diffusion_shape(config)[-1], **{**kwargs, "num_classes": 0})
  return TextConditioned(CLIPTextModel(encoder), denoiser, config.text.train_encoder)


def make_model_fn(model, params, process):
  """model_fn(x_t, t, y) for continuous t in (0, 1]: the network sees process.network_time(t) (the index t T - 1 for a
  discrete schedule, (N - 1) t or sigma_t for an SDE)."""
  def model_fn(x, t, y=None):
    return model.apply({"params": params}, x, process.network_time(t), y, train=False)
  return model_fn
