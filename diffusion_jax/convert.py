"""Released checkpoints into this codebase: a diffusers `UNet2DModel` directory (config.json + safetensors or .bin, e.g.
Ho et al.'s google/ddpm-cifar10-32 and the other DDPM releases), a DiT (a `DiTTransformer2DModel` directory or a DiT
pipeline with transformer/, vae/ and scheduler/, e.g. facebook/DiT-XL-2-256), or a whole Stable Diffusion v1 / v2
directory (unet/, vae/, text_encoder/, tokenizer/, scheduler/), becomes orbax checkpoints and a config file.

  python -m diffusion_jax.convert --from=diffusers --src=DIR --dst=DIR [--tfds_name=cifar10]
  python -m diffusion_jax.convert --from=stable_diffusion --src=SD_DIR --dst=DIR

then: python -m diffusion_jax.main --config=DIR/config.py --workdir=DIR --mode=sample [--config.sample.prompt="..."]"""
import dataclasses
import json
import os
import pprint
import shutil

import jax
import numpy as np
from absl import app, flags, logging

from diffusion_jax import build, checkpoint
from diffusion_jax.cli_errors import short_errors
from diffusion_jax.config_files import load_config
from diffusion_jax.models import clip_text
from diffusion_jax.models.state_dict import from_state_dict
from diffusion_jax.models.transformer import diffusers_name

# diffusers block types -> whether the level has attention, for UNet2DModel and (cross-attention) for
# UNet2DConditionModel; anything else is refused by name
DOWN_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}
UP_BLOCKS = {"UpBlock2D": False, "AttnUpBlock2D": True}
COND_DOWN_BLOCKS = {"DownBlock2D": False, "CrossAttnDownBlock2D": True}
COND_UP_BLOCKS = {"UpBlock2D": False, "CrossAttnUpBlock2D": True}
# fields of a UNet2DModel / UNet2DConditionModel config this network reproduces only at these values
FIXED = {"act_fn": "silu", "time_embedding_type": "positional", "center_input_sample": False,
         "mid_block_scale_factor": 1, "downsample_padding": 0, "downsample_type": "conv", "upsample_type": "conv",
         "add_attention": True, "class_embed_type": None, "num_class_embeds": None}
COND_FIXED = {"act_fn": "silu", "time_embedding_type": "positional", "center_input_sample": False,
              "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn", "class_embed_type": None,
              "num_class_embeds": None, "only_cross_attention": False, "dual_cross_attention": False,
              "addition_embed_type": None, "encoder_hid_dim": None, "time_cond_proj_dim": None,
              "conv_in_kernel": 3, "conv_out_kernel": 3, "attention_type": "default"}
RENAMED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}  # diffusers < 0.14
TFDS_NAMES = {"cifar10": "cifar10", "celebahq": "celeb_a_hq/256", "church": "lsun/church_outdoor",
              "bedroom": "lsun/bedroom", "cat": "lsun/cat"}
SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
BETAS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}  # the (beta_start, beta_end) each one supports
# fields of an AutoencoderKL config this autoencoder reproduces only at these values
VAE_FIXED = {"act_fn": "silu", "mid_block_add_attention": True, "use_quant_conv": True, "use_post_quant_conv": True,
             "shift_factor": None, "latents_mean": None, "latents_std": None}
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
VARIANCES = {"fixed_small": "beta_tilde", "fixed_large": "beta"}


def check_fixed(cfg, fixed, kind):
  """Refuses a config.json setting the network reproduces only at the value `fixed` gives it (absent: that value)."""
  for key, value in fixed.items():
    if cfg.get(key, value) != value:
      raise ValueError(f"Unsupported {kind} setting {key}={cfg[key]!r}; this converter supports {key}={value!r}")


def unet_overrides(cfg):
  """Config overrides ({"model.block_out_channels": ..., ...}) for a diffusers UNet2DModel config.json, or a
  UNet2DConditionModel's (one with cross_attention_dim: Stable Diffusion's layout)."""
  conditional = "cross_attention_dim" in cfg
  down_blocks, up_blocks = (COND_DOWN_BLOCKS, COND_UP_BLOCKS) if conditional else (DOWN_BLOCKS, UP_BLOCKS)
  cls = "UNet2DConditionModel" if conditional else "UNet2DModel"
  check_fixed(cfg, COND_FIXED if conditional else FIXED, cls)
  down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
  for kind, types, known in (("down", down, down_blocks), ("up", up, up_blocks)):
    bad = sorted({t for t in types if t not in known})
    if bad:
      raise ValueError(f"Unsupported {kind} block type(s) {bad}; supported: {', '.join(known)}")
  channels = list(cfg["block_out_channels"])
  if not len(down) == len(up) == len(channels):
    raise ValueError(f"{len(down)} down blocks, {len(up)} up blocks and {len(channels)} block_out_channels differ")
  if [down_blocks[t] for t in down] != [up_blocks[t] for t in reversed(up)]:
    raise ValueError(f"Attention levels of down_block_types {down} and up_block_types {up} do not mirror each other")
  if cfg.get("attn_norm_num_groups") not in (None, cfg.get("norm_num_groups", 32)):
    raise ValueError(f"Unsupported attn_norm_num_groups={cfg['attn_norm_num_groups']} (differs from norm_num_groups)")
  size = cfg["sample_size"]
  size = size[0] if isinstance(size, (list, tuple)) else size
  head_dim = cfg.get("attention_head_dim")
  attn_channels = [c for c, t in zip(channels, down) if down_blocks[t]] + channels[-1:]  # and the middle block's
  if conditional:  # UNet2DConditionModel's attention_head_dim is, for historical reasons, the head count
    heads = cfg.get("num_attention_heads") or head_dim
    heads = set(heads) if isinstance(heads, (list, tuple)) else {heads}
  else:
    heads = {c // head_dim if head_dim else 1 for c in attn_channels}
  if len(heads) > 1:
    raise ValueError(f"attention_head_dim={head_dim} gives a different head count per level ({sorted(heads)}); "
                     "supported: one head count for every attention level")
  if cfg.get("in_channels", 3) != cfg.get("out_channels", 3):
    raise ValueError(f"in_channels={cfg['in_channels']} and out_channels={cfg['out_channels']} differ")
  if cfg.get("resnet_time_scale_shift", "default") not in ("default", "scale_shift"):
    raise ValueError(f"Unsupported resnet_time_scale_shift={cfg['resnet_time_scale_shift']!r}; "
                     "supported: default, scale_shift")
  return {
      "data.image_size": size, "data.channels": cfg.get("in_channels", 3),
      "model.name": "unet", "model.block_out_channels": tuple(channels),
      "model.layers_per_block": cfg.get("layers_per_block", 2),
      "model.attn_resolutions": tuple(size // 2 ** i for i, t in enumerate(down) if down_blocks[t]),
      "model.num_heads": heads.pop(), "model.norm_groups": cfg.get("norm_num_groups", 32),
      "model.norm_eps": cfg.get("norm_eps", 1e-5), "model.dropout": cfg.get("dropout", 0.0),
      "model.scale_shift": cfg.get("resnet_time_scale_shift", "default") == "scale_shift",
      "model.flip_sin_to_cos": cfg.get("flip_sin_to_cos", True), "model.freq_shift": float(cfg.get("freq_shift", 0)),
      "model.num_classes": 0, **(cond_overrides(cfg) if conditional else {})}


def cond_overrides(cfg):
  """The cross-attention fields of a UNet2DConditionModel config."""
  depth = cfg.get("transformer_layers_per_block", 1)
  if not isinstance(depth, int):
    raise ValueError(f"Unsupported transformer_layers_per_block={depth!r}; supported: one depth for every level")
  if cfg.get("downsample_padding", 1) not in (0, 1):
    raise ValueError(f"Unsupported downsample_padding={cfg['downsample_padding']}; supported: 0, 1")
  return {"model.context_dim": cfg["cross_attention_dim"], "model.transformer_depth": depth,
          "model.linear_projection": bool(cfg.get("use_linear_projection", False)),
          "model.downsample_padding": cfg.get("downsample_padding", 1)}


def scheduler_overrides(cfg):
  """Config overrides for a diffusers DDPMScheduler / DDIMScheduler scheduler_config.json."""
  schedule = cfg.get("beta_schedule", "linear")
  if schedule not in SCHEDULES:
    raise ValueError(f"Unsupported beta_schedule {schedule!r}; supported: {', '.join(SCHEDULES)}")
  betas = BETAS.get(schedule)
  if betas and (cfg.get("beta_start", betas[0]), cfg.get("beta_end", betas[1])) != betas:
    raise ValueError(f"Unsupported {schedule} betas {cfg.get('beta_start')}..{cfg.get('beta_end')}; supported: "
                     f"{betas[0]}..{betas[1]}")
  prediction, variance = cfg.get("prediction_type", "epsilon"), cfg.get("variance_type", "fixed_small")
  if prediction not in PREDICTIONS or variance not in VARIANCES:
    raise ValueError(f"Unsupported prediction_type={prediction!r} or variance_type={variance!r}; supported: "
                     f"{', '.join(PREDICTIONS)}; {', '.join(VARIANCES)}")
  spacing = cfg.get("timestep_spacing", "leading")
  if spacing not in ("leading", "trailing", "linspace"):
    raise ValueError(f"Unsupported timestep_spacing={spacing!r}; supported: leading, trailing, linspace")
  if spacing == "leading" and cfg.get("steps_offset", 0) == 1:  # Stable Diffusion's (with set_alpha_to_one=False)
    spacing = "leading_offset"
  return {"diffusion.schedule": SCHEDULES[schedule], "diffusion.num_timesteps": cfg.get("num_train_timesteps", 1000),
          "sample.spacing": spacing,
          "diffusion.prediction": PREDICTIONS[prediction], "sample.ddpm_variance": VARIANCES[variance],
          "sample.clip_x0": bool(cfg.get("clip_sample", True))}


def torch_key(path):
  """The diffusers state-dict prefix of one of this U-Net's parameter paths (a tuple of module names)."""
  top, rest = path[0], list(path[1:])
  parts = top.split("_")
  if top in ("conv_in", "conv_out", "conv_norm_out"):
    prefix = top
  elif top.startswith("time_embedding_"):
    prefix = f"time_embedding.linear_{parts[-1]}"
  elif top == "mid_attn":
    prefix = "mid_block.attentions.0"
  elif top.startswith("mid_resnet_"):
    prefix = f"mid_block.resnets.{parts[-1]}"
  else:  # down_{i}_resnet_{j}, down_{i}_attn_{j}, down_{i}_downsample, up_{i}_..., up_{i}_upsample
    blocks = f"{parts[0]}_blocks.{parts[1]}"
    kind = parts[2]
    prefix = {"resnet": f"{blocks}.resnets.{parts[-1]}", "attn": f"{blocks}.attentions.{parts[-1]}",
              "downsample": f"{blocks}.downsamplers.0.conv", "upsample": f"{blocks}.upsamplers.0.conv"}[kind]
  rest = [diffusers_name(r) for r in rest]
  leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[rest.pop()]
  return ".".join([prefix, *rest, leaf])


def vae_key(path):
  """The diffusers AutoencoderKL state-dict key of one of models/autoencoder.py's parameter paths."""
  if path[0] in ("quant_conv", "post_quant_conv"):
    return f"{path[0]}.{ {'kernel': 'weight', 'bias': 'bias'}[path[-1]]}"
  return f"{path[0]}.{torch_key(path[1:])}"  # encoder. / decoder. + the U-Net's block names


def convert_params(state_dict, abstract_params, key=torch_key):
  """The flax parameter tree of a diffusers state dict (state_dict.from_state_dict, strict), with the attention names
  of diffusers < 0.14 renamed."""
  return from_state_dict({rename_attention(k): v for k, v in state_dict.items()}, abstract_params, key)


def rename_attention(key):
  parts = key.split(".")
  if "attentions" in parts and parts[-2] in RENAMED_ATTENTION:
    parts[-2:-1] = RENAMED_ATTENTION[parts[-2]].split(".")
  return ".".join(parts)


def load_state_dict(src):
  """{key: numpy array} from diffusion_pytorch_model.safetensors (or .bin, which needs torch) in src."""
  st = os.path.join(src, "diffusion_pytorch_model.safetensors")
  if os.path.exists(st):
    from safetensors.numpy import load_file
    return load_file(st)
  bin_path = os.path.join(src, "diffusion_pytorch_model.bin")
  if os.path.exists(bin_path):
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"{bin_path} is a PyTorch pickle: reading it needs torch (or convert it to "
                        ".safetensors)") from e
    return {k: v.float().numpy() for k, v in torch.load(bin_path, map_location="cpu", weights_only=True).items()}
  raise FileNotFoundError(f"No diffusion_pytorch_model.safetensors or .bin in {src}")


def find_scheduler_config(src):
  """scheduler_config.json beside the U-Net, or in the pipeline's scheduler/ folder when src is its unet/ folder."""
  for path in (os.path.join(src, "scheduler_config.json"),
               os.path.join(os.path.dirname(os.path.abspath(src)), "scheduler", "scheduler_config.json"),
               os.path.join(os.path.dirname(os.path.abspath(src)), "scheduler_config.json")):
    if os.path.exists(path):
      return path
  return None


def guess_tfds_name(src):
  name = os.path.basename(os.path.abspath(src.rstrip("/")))
  name = os.path.basename(os.path.dirname(os.path.abspath(src))) if name == "unet" else name
  return next((v for k, v in TFDS_NAMES.items() if k in name.replace("-", "").replace("_", "")), "")


def vae_overrides(cfg):
  """autoencoder.model overrides for a diffusers AutoencoderKL config.json."""
  check_fixed(cfg, VAE_FIXED, "AutoencoderKL")
  for kind, types, known in (("down", cfg["down_block_types"], "DownEncoderBlock2D"),
                             ("up", cfg["up_block_types"], "UpDecoderBlock2D")):
    bad = sorted({t for t in types if t != known})
    if bad:
      raise ValueError(f"Unsupported AutoencoderKL {kind} block type(s) {bad}; supported: {known}")
  if cfg.get("in_channels", 3) != cfg.get("out_channels", 3):
    raise ValueError(f"AutoencoderKL in_channels={cfg['in_channels']} and out_channels={cfg['out_channels']} differ")
  return {"autoencoder.model.block_out_channels": tuple(cfg["block_out_channels"]),
          "autoencoder.model.layers_per_block": cfg.get("layers_per_block", 1),
          "autoencoder.model.latent_channels": cfg.get("latent_channels", 4),
          "autoencoder.model.norm_groups": cfg.get("norm_num_groups", 32)}


def write_config_file(path, overrides, source, kind="diffusers UNet2DModel"):
  lines = [f'"""diffusion_jax config of the {kind} converted from {source}."""',
           "from configs.base import get_base_config, model_defaults", "", "", "def get_config():",
           "  c = get_base_config()", f"  c.model = model_defaults({overrides.get('model.name', 'unet')!r})"]
  lines += [f"  c.{k} = {v!r}" for k, v in overrides.items() if k != "model.name"]
  lines += ["  return c", ""]
  with open(path, "w") as f:
    f.write("\n".join(lines))


def abstract_params(config):
  """Shapes and dtypes of the parameters of config's network (nothing computed)."""
  model, _ = build.setup(config)
  return jax.eval_shape(lambda: build.init_state(config, model, build.model_optimizer(config),
                                                 jax.random.PRNGKey(0))).params


def convert_diffusers(src, dst, tfds_name=None):
  """Writes dst/config.py and dst/checkpoints/0 (params = EMA params = the release's weights); returns the config.
  A DiT (a DiTTransformer2DModel directory, or a DiT pipeline's with transformer/ and vae/) goes to convert_dit."""
  if os.path.exists(os.path.join(src, "transformer", "config.json")):
    return convert_dit(src, dst, tfds_name)
  unet_cfg = read_json(os.path.join(src, "config.json"), "a diffusers model directory holds config.json and "
                       "diffusion_pytorch_model.safetensors (or a pipeline's transformer/)")
  cls = unet_cfg.get("_class_name", "UNet2DModel")
  if is_dit(unet_cfg):
    return convert_dit(src, dst, tfds_name)
  if cls != "UNet2DModel":
    raise ValueError(f"{src} holds a {cls}; this converter reads UNet2DModel and DiTTransformer2DModel directories "
                     "(and Stable Diffusion pipelines with --from=stable_diffusion)")
  overrides = unet_overrides(unet_cfg)
  scheduler = find_scheduler_config(src)
  if scheduler:
    with open(scheduler) as f:
      overrides.update(scheduler_overrides(json.load(f)))
  else:
    logging.warning("No scheduler_config.json near %s: keeping the base config's diffusion settings", src)
  tfds_name = guess_tfds_name(src) if tfds_name is None else tfds_name
  overrides.update({"data.name": "tfds", "data.tfds_name": tfds_name} if tfds_name else {})
  os.makedirs(dst, exist_ok=True)
  write_config_file(os.path.join(dst, "config.py"), overrides, os.path.abspath(src))
  config = load_config(os.path.join(dst, "config.py"))
  params = convert_params(load_state_dict(src), abstract_params(config))
  save_state(os.path.join(dst, "checkpoints"), build.new_state(params, build.model_optimizer(config),
                                                               jax.random.PRNGKey(config.seed)), config)
  logging.info("Converted %s (%d parameters) -> %s\n%s", src, sum(np.size(p) for p in jax.tree.leaves(params)), dst,
               pprint.pformat(overrides))
  return config


def save_state(directory, state, config):
  """Writes `state` as step 0 of an orbax checkpoint in `directory` (with the config) and waits for it."""
  mngr = checkpoint.manager(directory)
  checkpoint.save(mngr, 0, state, config)
  mngr.wait_until_finished()


def read_json(path, layout="a Stable Diffusion directory holds unet/, vae/, text_encoder/, tokenizer/ and scheduler/ "
                    "(diffusers' save_pretrained layout)"):
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {layout}")
  with open(path) as f:
    return json.load(f)


def write_autoencoder(src, dst, config, vae_cfg):
  """A diffusers AutoencoderKL directory (a pipeline's vae/) into dst/autoencoder: checkpoints/0 and latent_scale.json
  with its scaling_factor, so that model.latent configs find it."""
  ae = build.get_autoencoder(config)
  tx = build.make_optimizer(config.autoencoder.optim)
  abstract = jax.eval_shape(lambda: build.init_autoencoder_state(config, ae, tx, jax.random.PRNGKey(0))).params
  vae = convert_params(load_state_dict(src), abstract, key=vae_key)
  out = os.path.join(dst, "autoencoder")
  save_state(os.path.join(out, "checkpoints"), build.new_state(vae, tx, jax.random.PRNGKey(config.seed)), config)
  size = config.data.image_size // 2 ** (len(vae_cfg["block_out_channels"]) - 1)
  with open(os.path.join(out, "latent_scale.json"), "w") as fp:
    json.dump({"step": 0, "scale_factor": vae_cfg.get("scaling_factor", 0.18215),
               "latent_shape": [size, size, config.autoencoder.model.latent_channels], "source": os.path.abspath(src)},
              fp, indent=1)


def vae_pipeline_overrides(vae_cfg, latent_size):
  """The overrides of a latent model behind the AutoencoderKL of vae_cfg whose latents are latent_size square."""
  f = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
  return {**vae_overrides(vae_cfg), "data.image_size": latent_size * f, "data.channels": vae_cfg.get("in_channels", 3),
          "model.latent": True}


def convert_stable_diffusion(src, dst, tfds_name=None):
  """A Stable Diffusion directory into dst: config.py (latent, text-conditioned, frozen CLIP), checkpoints/0 (the U-Net
  and the text encoder), autoencoder/checkpoints/0 with latent_scale.json (the VAE and its scaling_factor), and
  tokenizer/ (copied). Returns the config."""
  del tfds_name  # the latents of no TFDS dataset
  unet_cfg, vae_cfg = (read_json(os.path.join(src, d, "config.json")) for d in ("unet", "vae"))
  text_cfg, text_params = clip_text.load_pretrained(os.path.join(src, "text_encoder"))
  overrides = unet_overrides(unet_cfg)
  if "model.context_dim" not in overrides:
    raise ValueError(f"{src}/unet holds a {unet_cfg.get('_class_name')} without cross-attention; Stable Diffusion's "
                     "is a UNet2DConditionModel")
  overrides.update(vae_pipeline_overrides(vae_cfg, overrides["data.image_size"]))
  overrides.update({"text.train_encoder": False, "training.p_uncond": 0.1,  # SD's text dropout
                    "text.tokenizer": os.path.abspath(os.path.join(dst, "tokenizer"))})
  overrides.update({f"text.encoder.{k}": v for k, v in dataclasses.asdict(text_cfg).items()})
  overrides.update(scheduler_overrides(read_json(os.path.join(src, "scheduler", "scheduler_config.json"))))
  overrides.update({"sample.clip_x0": False, "sample.runs": "ddim:50:w=6.5", "sample.num_samples": 4,
                    "sample.batch_size": 4})  # guidance scale 7.5 = 1 + w
  os.makedirs(dst, exist_ok=True)
  shutil.copytree(os.path.join(src, "tokenizer"), os.path.join(dst, "tokenizer"), dirs_exist_ok=True)
  write_config_file(os.path.join(dst, "config.py"), overrides, os.path.abspath(src), "Stable Diffusion pipeline")
  config = load_config(os.path.join(dst, "config.py"))

  params = {"unet": convert_params(load_state_dict(os.path.join(src, "unet")), abstract_params(config)["unet"]),
            "text_encoder": text_params}
  save_state(os.path.join(dst, "checkpoints"), build.new_state(params, build.model_optimizer(config),
                                                               jax.random.PRNGKey(config.seed)), config)

  write_autoencoder(os.path.join(src, "vae"), dst, config, vae_cfg)
  logging.info("Converted %s -> %s\n%s", src, dst, pprint.pformat(overrides))
  return config


# DiT's fields of a DiTTransformer2DModel config (diffusers < 0.28 saved DiT as a Transformer2DModel with patch_size,
# as in facebook/DiT-XL-2-256) that this DiT reproduces only at these values
DIT_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")
DIT_FIXED = {"activation_fn": "gelu-approximate", "attention_bias": True, "norm_type": "ada_norm_zero",
             "norm_elementwise_affine": False, "cross_attention_dim": None, "num_vector_embeds": None,
             "only_cross_attention": False, "double_self_attention": False}
DIT_MODULES = {"pos_embed": "pos_embed.proj", "proj_out_1": "proj_out_1", "proj_out_2": "proj_out_2",
               "norm1_linear": "norm1.linear", "to_out": "to_out.0", "ff_proj": "net.0.proj", "ff_out": "net.2",
               "time_embedding_1": "transformer_blocks.0.norm1.emb.timestep_embedder.linear_1",
               "time_embedding_2": "transformer_blocks.0.norm1.emb.timestep_embedder.linear_2",
               "class_embedding": "transformer_blocks.0.norm1.emb.class_embedder.embedding_table"}
EMBEDDER = "norm1.emb."  # each diffusers block holds a copy of DiT's one timestep + class embedder


def is_dit(cfg):
  return cfg.get("_class_name") == DIT_CLASSES[0] or (cfg.get("_class_name") == DIT_CLASSES[1]
                                                       and cfg.get("patch_size") is not None)


def dit_overrides(cfg):
  """Config overrides of models/dit.py for a diffusers DiTTransformer2DModel config.json."""
  if not is_dit(cfg):
    raise ValueError(f"A {cfg.get('_class_name')} is not a DiT; this converter reads {' and '.join(DIT_CLASSES)} "
                     "(with patch_size) directories")
  check_fixed(cfg, DIT_FIXED, "DiT")
  channels, out = cfg.get("in_channels", 4), cfg.get("out_channels") or cfg.get("in_channels", 4)
  if out not in (channels, 2 * channels):
    raise ValueError(f"DiT out_channels={out} is neither in_channels={channels} nor twice it (learn_sigma)")
  if not cfg.get("num_embeds_ada_norm"):
    raise ValueError("A DiT without num_embeds_ada_norm (its class count) cannot be converted: adaLN-Zero needs it")
  return {"model.name": "dit", "model.depth": cfg.get("num_layers", 28),
          "model.hidden_size": cfg["num_attention_heads"] * cfg["attention_head_dim"],
          "model.num_heads": cfg["num_attention_heads"], "model.patch_size": cfg["patch_size"],
          "model.num_classes": cfg["num_embeds_ada_norm"], "model.learn_sigma": out == 2 * channels,
          "model.freq_shift": 1.0, "model.norm_eps": cfg.get("norm_eps", 1e-5),
          "data.image_size": cfg.get("sample_size", 32), "data.channels": channels}


def dit_key(path):
  """The diffusers DiTTransformer2DModel state-dict key of one of models/dit.py's parameter paths."""
  *mods, leaf = path
  names = [DIT_MODULES.get(m, m.replace("transformer_blocks_", "transformer_blocks.")) for m in mods if m != "ff"]
  names[-1:] = [f"ff.{names[-1]}"] if "ff" in mods else names[-1:]
  return ".".join(names + [{"kernel": "weight", "bias": "bias", "embedding": "weight"}[leaf]])


def dit_state_dict(state_dict, num_classes):
  """DiT's state dict with one shared embedder: refuses blocks whose embedder copies differ, and a class table that
  is not num_classes + 1 rows (the classes and the null class of classifier-free guidance)."""
  shared = {}
  for key, value in state_dict.items():
    if EMBEDDER in key and not key.startswith("transformer_blocks.0."):
      first = "transformer_blocks.0." + key.split(".", 2)[2]
      if first not in state_dict or not np.array_equal(state_dict[first], value):
        raise ValueError(f"{key} differs from {first}: DiT shares one timestep and class embedder among its blocks; "
                         "a DiTTransformer2DModel whose blocks embed differently is not a DiT")
      continue
    shared[key] = value
  table = shared.get(DIT_MODULES["class_embedding"] + ".weight")
  if table is not None and len(table) != num_classes + 1:
    raise ValueError(f"The class embedding table has {len(table)} rows, but num_embeds_ada_norm={num_classes} in "
                     f"config.json needs {num_classes + 1} (the classes and the null class): the table holds "
                     f"{len(table) - 1} classes")
  return shared


def convert_dit(src, dst, tfds_name=None):
  """A DiT into dst: src is a DiTTransformer2DModel directory, or a DiT pipeline's (transformer/, vae/, scheduler/,
  the layout of facebook/DiT-XL-2-256), which also writes dst/autoencoder and makes a latent config. Returns the
  config; sample it with main.py --mode=sample (class-conditional, guidance scale 1.5 = 1 + w as in DiT's table).
  The config computes diffusers' DiTTransformer2DModel (timestep frequencies shifted by 1, the MLP's LayerNorm eps
  1e-5); model.freq_shift=0 and model.norm_eps=1e-6 give the function of DiT's own code, which trained the weights."""
  transformer = os.path.join(src, "transformer") if os.path.isdir(os.path.join(src, "transformer")) else src
  overrides = dit_overrides(read_json(os.path.join(transformer, "config.json"), "a DiTTransformer2DModel directory "
                                      "holds config.json and diffusion_pytorch_model.safetensors"))
  vae_dir = os.path.join(src, "vae")
  vae_cfg = read_json(os.path.join(vae_dir, "config.json")) if os.path.isdir(vae_dir) else None
  if vae_cfg:
    overrides.update(vae_pipeline_overrides(vae_cfg, overrides["data.image_size"]))
  scheduler = find_scheduler_config(transformer)
  overrides.update(scheduler_overrides(read_json(scheduler)) if scheduler else {"sample.clip_x0": False})
  if tfds_name is None:  # ImageNet's images behind a pipeline's VAE; a bare latent transformer has no data set
    tfds_name = "imagenet2012" if vae_cfg and overrides["model.num_classes"] == 1000 else ""
  overrides.update({"data.name": "tfds", "data.tfds_name": tfds_name} if tfds_name else {})
  overrides.update({"training.p_uncond": 0.1, "sample.runs": "ddim:50:w=0.5", "sample.num_samples": 8,
                    "sample.batch_size": 8})  # DiT's label dropout and CFG scale 1.5
  state_dict = dit_state_dict(load_state_dict(transformer), overrides["model.num_classes"])  # before writing
  os.makedirs(dst, exist_ok=True)
  write_config_file(os.path.join(dst, "config.py"), overrides, os.path.abspath(src), "DiT")
  config = load_config(os.path.join(dst, "config.py"))
  params = from_state_dict(state_dict, abstract_params(config), dit_key)
  save_state(os.path.join(dst, "checkpoints"), build.new_state(params, build.model_optimizer(config),
                                                               jax.random.PRNGKey(config.seed)), config)
  if vae_cfg:
    write_autoencoder(vae_dir, dst, config, vae_cfg)
  logging.info("Converted %s (%d parameters) -> %s\n%s", src, sum(np.size(p) for p in jax.tree.leaves(params)), dst,
               pprint.pformat(overrides))
  return config


CONVERTERS = {"diffusers": convert_diffusers, "stable_diffusion": convert_stable_diffusion}
FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_enum("from", "diffusers", list(CONVERTERS), "Format of the source checkpoint.")
  flags.DEFINE_string("src", None, "Directory of the source checkpoint (diffusers: a UNet2DModel's or a "
                      "DiTTransformer2DModel's config.json + weights, or a DiT pipeline; stable_diffusion: the "
                      "pipeline directory with unet/, vae/, text_encoder/, ...).")
  flags.DEFINE_string("dst", None, "Output directory: config.py and checkpoints/ (use it as main.py's workdir).")
  flags.DEFINE_string("tfds_name", None, "TFDS dataset of the model (default: guessed from the directory name).")
  flags.mark_flags_as_required(["src", "dst"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  with short_errors():
    CONVERTERS[FLAGS["from"].value](FLAGS.src, FLAGS.dst, FLAGS.tfds_name)


if __name__ == "__main__":
  define_flags()
  app.run(main)
