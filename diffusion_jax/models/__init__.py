"""Networks by name, and the bridge from a network to the `model_fn(x_t, t, y=None)` contract of the samplers."""
import dataclasses

from diffusion_jax.latent import diffusion_shape
from diffusion_jax.models.clip_text import CLIPTextConfig, CLIPTextModel, TextConditioned
from diffusion_jax.models.dit import DiT
from diffusion_jax.models.kernels import resolve
from diffusion_jax.models.ncsnpp import NCSNpp
from diffusion_jax.models.precondition import EDMPrecond
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


def get_model(config):
  """Builds `config.model.name` with the remaining `config.model` fields; output channels follow the data (or the
  latents, with model.latent). With model.context_dim > 0 the network is conditioned on text: a CLIP text encoder
  (config.text.encoder) in front of it, its classes named in captions rather than embedded. model.precondition="edm"
  wraps the whole in EDM's preconditioning (EDMPrecond, sigma_data = config.training.sigma_data). Fields of another
  registered network are ignored (switching model.name needs nothing else); a field of none is refused."""
  cls = MODELS.get(config.model.name)
  resolve(config.model.get("kernels", "auto"))  # an unknown kernel set fails here, before any tracing
  precondition = config.model.get("precondition", "")
  if precondition not in PRECONDITIONINGS:
    raise ValueError(f"Unknown model.precondition {precondition!r}; valid: '' (none), edm")
  kwargs = {k: v for k, v in config.model.items() if k not in WRAPPER_FIELDS}
  own = network_fields(cls)
  unknown = set(kwargs) - set().union(*(network_fields(MODELS.get(n)) for n in MODELS.names()))
  if unknown:
    raise ValueError(f"Unknown field(s) {sorted(unknown)} for model {config.model.name!r}; valid: "
                     f"{sorted(own | set(WRAPPER_FIELDS[1:]))}")
  if kwargs.get("context_dim") and "context_dim" not in own:
    raise ValueError(f"model.context_dim={kwargs['context_dim']} (text conditioning) needs a network with "
                     f"cross-attention (unet); {config.model.name!r} takes class labels: set model.context_dim=0")
  kwargs = {k: v for k, v in kwargs.items() if k in own}  # the other networks' fields stay unused
  network = _network(config, cls, kwargs)
  return EDMPrecond(network, config.training.sigma_data) if precondition == "edm" else network


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
