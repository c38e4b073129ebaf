"""The transformer backbones: DiT and U-ViT have the papers' parameter counts and structure (adaLN-Zero blocks start
as the identity; U-ViT's long skips); a random diffusers DiTTransformer2DModel converts and gives PyTorch's output, and
a random DiT pipeline (transformer, VAE, DDIM) converted and sampled through main.py gives diffusers' DiTPipeline's
images; every target and path, mixed precision and FSDP train a DiT; bad input says what is valid."""
import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs.base import model_defaults
from conftest import run_python, tiny_config
from diffusion_jax import build, convert, main, models, parallel, train
from diffusion_jax.models.dit import DiT, DiTBlock
from diffusion_jax.models.uvit import UViT

SMALL = dict(depth=2, hidden_size=64, num_heads=4, patch_size=2, num_classes=10)


def small_config(name="dit", **overrides):
  c = tiny_config(**{k: v for k, v in overrides.items() if not k.startswith("model.")})
  c.model = model_defaults(name, **{**SMALL, **{k[6:]: v for k, v in overrides.items() if k.startswith("model.")}})
  return c


def num_params(module, shape, labels):
  x, t = jnp.zeros(shape), jnp.zeros(shape[:1])
  y = jnp.zeros(shape[:1], jnp.int32) if labels else None
  return sum(np.size(a) for a in jax.tree.leaves(jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x, t, y))))


def test_named_sizes_have_the_papers_parameter_counts():
  # Peebles & Xie 2023, Table 4 (ImageNet 256: 32x32x4 latents, 1000 classes, learn_sigma), in millions; the released
  # DiT-XL/2 holds 675,129,632 numbers, 294,912 of them its fixed position table (here a constant, not a parameter)
  for size, paper in {"S/2": 33, "B/2": 130, "L/2": 458, "XL/2": 675}.items():
    assert round(num_params(DiT(4, size=size, num_classes=1000, learn_sigma=True), (1, 32, 32, 4), True) / 1e6) == paper
  assert num_params(DiT(4, size="DiT-XL/2", num_classes=1000, learn_sigma=True), (1, 32, 32, 4), True) == \
      675129632 - 256 * 1152
  # Bao et al. 2023, Table 1 / their configs: U-ViT-S/2 on CIFAR-10 (32x32x3, unconditional) and M, L, H on
  # ImageNet latents (32x32x4, 1000 classes)
  assert round(num_params(UViT(3, size="S/2"), (1, 32, 32, 3), False) / 1e6) == 44
  for size, paper in {"M/2": 131, "L/2": 287, "H/2": 501}.items():
    assert round(num_params(UViT(4, size=size, num_classes=1000), (1, 32, 32, 4), True) / 1e6) == paper, size


def test_adaln_zero_blocks_start_as_the_identity_and_dit_outputs_zero():
  rng = np.random.default_rng(0)
  x, c = jnp.asarray(rng.standard_normal((2, 16, 64)), jnp.float32), jnp.asarray(rng.standard_normal((2, 64)))
  block = DiTBlock(4)
  params = block.init(jax.random.PRNGKey(0), x, c)
  assert np.array_equal(block.apply(params, x, c), x)
  model = DiT(1, **SMALL)
  x = jnp.asarray(rng.standard_normal((3, 8, 8, 1)), jnp.float32)
  params = model.init(jax.random.PRNGKey(0), x, jnp.ones(3), jnp.arange(3))
  assert not np.any(model.apply(params, x, jnp.ones(3), jnp.arange(3)))
  perturbed = jax.tree.map(lambda p: p + 0.05, params)  # away from zero: the labels and times matter
  out = lambda y, t=jnp.ones(3): model.apply(perturbed, x, t, y)
  assert not np.allclose(out(jnp.arange(3)), out(jnp.arange(3) + 1))
  assert not np.allclose(out(jnp.arange(3)), out(jnp.arange(3), jnp.full(3, 500.0)))
  np.testing.assert_array_equal(out(None), out(jnp.full(3, 10)))  # y=None is the null label


def test_uvit_has_long_skips_and_tokens_for_time_and_class():
  model = UViT(1, depth=5, hidden_size=32, num_heads=4, patch_size=2, num_classes=10)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 1)), jnp.float32)
  params = model.init(jax.random.PRNGKey(0), x, jnp.ones(2), jnp.arange(2))["params"]
  assert sorted(k for k in params if "blocks" in k or k == "mid_block") == [
      "in_blocks_0", "in_blocks_1", "mid_block", "out_blocks_0", "out_blocks_1"]
  assert params["out_blocks_0"]["skip_linear"]["kernel"].shape == (64, 32)
  assert "skip_linear" not in params["in_blocks_0"]
  assert params["pos_embed"].shape == (1, 2 + 16, 32)  # class, time and 16 patch tokens
  out = lambda y, t=jnp.ones(2): model.apply({"params": params}, x, t, y)
  assert not np.allclose(out(jnp.arange(2)), out(jnp.arange(2) + 1))
  assert not np.allclose(out(jnp.arange(2)), out(jnp.arange(2), jnp.full(2, 500.0)))
  np.testing.assert_array_equal(out(None), out(jnp.full(2, 10)))


def test_uvit_joins_each_deep_block_to_its_mirror():
  model = UViT(1, depth=5, hidden_size=32, num_heads=4, patch_size=2, num_classes=10)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 1)), jnp.float32)
  params = model.init(jax.random.PRNGKey(0), x, jnp.ones(2), jnp.arange(2))
  seen = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and "blocks" in (context.module.name or ""):
      seen[context.module.name] = (args, out)
    return out
  with nn.intercept_methods(record):
    model.apply(params, x, jnp.ones(2), jnp.arange(2))
  for deep, shallow in (("out_blocks_0", "in_blocks_1"), ("out_blocks_1", "in_blocks_0")):
    np.testing.assert_array_equal(seen[deep][0][1], seen[shallow][1])  # the skip is the mirrored block's output


def test_position_and_time_features_equal_the_reference_formulas():
  from diffusers.models.embeddings import get_2d_sincos_pos_embed
  from diffusion_jax.models.unet import timestep_embedding
  from diffusion_jax.models.vit import sincos_2d
  theirs = get_2d_sincos_pos_embed(64, 4, base_size=4, output_type="np")
  np.testing.assert_allclose(sincos_2d(64, 4, 4), theirs, atol=1e-6)
  t = np.array([0.0, 17.0, 999.0])  # DiT's TimestepEmbedder: cos then sin of t 10000^(-i / 128), i < 128
  freqs = np.exp(-np.log(10000) * np.arange(128) / 128)
  dit = np.concatenate([np.cos(t[:, None] * freqs), np.sin(t[:, None] * freqs)], axis=1)
  np.testing.assert_allclose(timestep_embedding(jnp.asarray(t), 256, flip_sin_to_cos=True, freq_shift=0.0), dit,
                             atol=2e-4)  # float32 phases of up to 999 rad


# --- diffusers' DiT -----------------------------------------------------------------------------------------------

def random_dit(learn_sigma, num_classes=10, seed=0, in_channels=4, sample_size=8):
  """A random DiTTransformer2DModel whose blocks share one embedder, as DiT's released checkpoints do."""
  from diffusers import DiTTransformer2DModel
  torch.manual_seed(seed)
  dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=in_channels,
                              out_channels=2 * in_channels if learn_sigma else in_channels, num_layers=2,
                              sample_size=sample_size, patch_size=2, num_embeds_ada_norm=num_classes).eval()
  with torch.no_grad():
    for p in dit.parameters():
      p.add_(0.1 * torch.randn_like(p))
    for block in dit.transformer_blocks[1:]:
      block.norm1.emb.load_state_dict(dit.transformer_blocks[0].norm1.emb.state_dict())
  return dit


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_converted_dit_equals_pytorch(learn_sigma, tmp_path):
  dit = random_dit(learn_sigma)
  dit.save_pretrained(str(tmp_path / "src"))
  if learn_sigma:  # facebook/DiT-XL-2-256's layout: saved by diffusers < 0.28 as a Transformer2DModel, no norm_eps
    cfg_path = tmp_path / "src" / "config.json"
    cfg = {k: v for k, v in json.loads(cfg_path.read_text()).items() if k != "norm_eps"}
    cfg_path.write_text(json.dumps(dict(cfg, _class_name="Transformer2DModel", num_vector_embeds=None,
                                        cross_attention_dim=None, use_linear_projection=False)))
  config = convert.convert_diffusers(str(tmp_path / "src"), str(tmp_path / "dst"))
  assert (config.model.name, config.model.learn_sigma, config.model.num_classes) == ("dit", learn_sigma, 10)
  params = build.load_params(config, str(tmp_path / "dst"), parallel.mesh_for(config))
  model, _ = build.setup(config)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 8, 8, 4)).astype(np.float32)
  t, y = np.array([0, 421, 999]), np.array([1, 5, 10])  # 10: the null label
  ours = np.asarray(model.apply({"params": params}, x, t.astype(np.float32), y, full_output=True))
  with torch.no_grad():
    theirs = dit(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t), torch.from_numpy(y)).sample
  theirs = theirs.numpy().transpose(0, 2, 3, 1)
  assert ours.shape == (3, 8, 8, 8 if learn_sigma else 4) and np.abs(theirs).max() > 0.5
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
  np.testing.assert_array_equal(model.apply({"params": params}, x, t.astype(np.float32), y), ours[..., :4])


VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
           up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1, latent_channels=4,
           norm_num_groups=8, sample_size=16, scaling_factor=0.5)


def test_a_converted_dit_pipeline_samples_like_diffusers(tmp_path, monkeypatch):
  """facebook/DiT-XL-2-256's layout, tiny and random: DDIM with guidance scale 1 + w from the same x_T gives
  DiTPipeline's images (whose null class is 1000, hence 1000 classes)."""
  import diffusers.pipelines.dit.pipeline_dit as pipeline_dit
  from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline
  from diffusion_jax.samplers.common import initial_noise
  torch.manual_seed(1)
  vae = AutoencoderKL(**VAE)
  with torch.no_grad():
    for p in vae.parameters():
      p.add_(0.05 * torch.randn_like(p))
  pipe = DiTPipeline(random_dit(True, num_classes=1000), vae, DDIMScheduler(clip_sample=False))
  src, dst = str(tmp_path / "DiT-tiny"), str(tmp_path / "converted")
  pipe.save_pretrained(src, safe_serialization=True)
  config = convert.convert_diffusers(src, dst)
  assert (config.model.latent, config.data.image_size, config.data.tfds_name, config.sample.clip_x0) == \
      (True, 16, "imagenet2012", False)
  config.sample.runs, config.sample.classes, config.sample.num_samples, config.sample.batch_size = \
      "ddim:4:w=1.0", "7,420", 2, 2
  main.run(config, dst, "sample")
  ours = np.load(os.path.join(dst, "samples", "ddim_4_w1.0.npz"))["images"]

  x_T, _ = initial_noise(jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), 0), (2, 8, 8, 4))
  monkeypatch.setattr(pipeline_dit, "randn_tensor",
                      lambda *a, **k: torch.from_numpy(np.asarray(x_T).transpose(0, 3, 1, 2).copy()))
  with torch.no_grad():
    theirs = pipe([7, 420], guidance_scale=2.0, num_inference_steps=4, output_type="np").images
  np.testing.assert_allclose(ours * 0.5 + 0.5, theirs, atol=1e-4)
  assert np.std(theirs) > 0.01


def test_bad_dit_input_says_what_is_valid(tmp_path):
  with pytest.raises(ValueError, match=r"input .* is not divisible by the patch size 3; valid patch sizes: 1, 2, 4, 8"):
    DiT(1, depth=1, hidden_size=32, num_heads=4, patch_size=3).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)),
                                                                     jnp.zeros(1))
  init = lambda c: build.init_state(c, models.get_model(c), build.model_optimizer(c), jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r"Unknown DiT size 'XXL/2' \(model.size\); valid: S/2, S/4, S/8, B/2"):
    init(small_config(**{"model.size": "XXL/2"}))
  with pytest.raises(ValueError, match=r"Unknown U-ViT size 'S/3' \(model.size\); valid: S/2, S/4, S/8, S-Deep/2"):
    config = small_config("uvit")
    config.model.size = "S/3"
    init(config)
  with pytest.raises(ValueError, match=r"model.size='S/2' means .* clashes with \{'patch_size': 4\}"):
    init(small_config(**{"model.size": "S/2", "model.patch_size": 4, "model.depth": 0, "model.hidden_size": 0,
                         "model.num_heads": 0}))
  with pytest.raises(ValueError, match=r"hidden_size=64 is not divisible by num_heads=3"):
    init(small_config(**{"model.num_heads": 3}))
  with pytest.raises(ValueError, match=r"set model.size \(e.g. S/2\) or every one of model.depth"):
    init(small_config(**{"model.depth": 0}))
  with pytest.raises(ValueError, match=r"Unknown field\(s\) \['patch'\] for model 'dit'"):
    model_defaults("dit", patch=2)
  with pytest.raises(ValueError, match=r"optim.decay_steps=3 ends the cosine decay before training.num_steps=6"):
    build.setup(small_config(**{"optim.decay_steps": 3}))
  config = small_config()
  config.model.depth_ = 3
  with pytest.raises(ValueError, match=r"Unknown field\(s\) \['depth_'\] for model 'dit'; valid: .*'hidden_size'"):
    models.get_model(config)
  # a DiT whose class table does not match num_embeds_ada_norm, another transformer type, blocks that embed apart
  dit = random_dit(False)
  dit.save_pretrained(str(tmp_path / "dit"))
  cfg_path = tmp_path / "dit" / "config.json"
  cfg = json.loads(cfg_path.read_text())
  cfg_path.write_text(json.dumps(dict(cfg, num_embeds_ada_norm=12)))
  with pytest.raises(ValueError, match=r"class embedding table has 11 rows, but num_embeds_ada_norm=12 in config.json "
                                       r"needs 13 .* the table holds 10 classes"):
    convert.convert_diffusers(str(tmp_path / "dit"), str(tmp_path / "out1"))
  for bad, message in ((dict(activation_fn="geglu"), r"Unsupported DiT setting activation_fn='geglu'"),
                       (dict(out_channels=6), r"DiT out_channels=6 is neither in_channels=4 nor twice it")):
    cfg_path.write_text(json.dumps(dict(cfg, **bad)))
    with pytest.raises(ValueError, match=message):
      convert.convert_diffusers(str(tmp_path / "dit"), str(tmp_path / "out0"))
  assert not os.path.exists(tmp_path / "out1")  # nothing is written when the weights do not fit
  cfg_path.write_text(json.dumps(dict(cfg, _class_name="SD3Transformer2DModel")))
  with pytest.raises(ValueError, match="holds a SD3Transformer2DModel; this converter reads UNet2DModel and "
                                       "DiTTransformer2DModel"):
    convert.convert_diffusers(str(tmp_path / "dit"), str(tmp_path / "out2"))
  cfg_path.write_text(json.dumps(cfg))
  with torch.no_grad():
    dit.transformer_blocks[1].norm1.emb.class_embedder.embedding_table.weight.add_(1.0)
  dit.save_pretrained(str(tmp_path / "dit"))
  with pytest.raises(ValueError, match="differs from transformer_blocks.0.norm1.emb.class_embedder"):
    convert.convert_diffusers(str(tmp_path / "dit"), str(tmp_path / "out3"))


# --- the same machinery as the U-Net -------------------------------------------------------------------------------

@pytest.mark.parametrize("name,sde,prediction", [("dit", "", "eps"), ("uvit", "", "x0"), ("dit", "", "v"),
                                                 ("uvit", "rectified_flow", "velocity"), ("dit", "edm", "x0")])
def test_every_target_and_path_trains(name, sde, prediction, tmp_path):
  edm = {"model.precondition": "edm", "training.weighting": "edm", "training.t_sampling": "lognormal_sigma"}
  config = small_config(name, **{"diffusion.sde": sde, "diffusion.prediction": prediction, "training.num_steps": 4,
                                 "training.checkpoint_every": 4, "training.p_uncond": 0.2, "optim.lr": 3e-3,
                                 **(edm if sde == "edm" else {})})
  state = train.train(config, str(tmp_path))
  with open(tmp_path / "training_log.json") as f:
    losses = [r["loss"] for r in json.load(f)["records"]]
  assert len(losses) == 2 and np.all(np.isfinite(losses)) and int(state.step) == 4


def test_bfloat16_dit_and_uvit_agree_with_float32():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 8, 8, 1)), jnp.float32)
  t, y = jnp.array([1.0, 200.0, 600.0, 999.0]), jnp.array([0, 3, 9, 10])
  for cls in (DiT, UViT):
    model = cls(1, **SMALL)
    params = jax.tree.map(lambda p: p + 0.02, model.init(jax.random.PRNGKey(0), x, t, y))
    full = model.apply(params, x, t, y)
    half = cls(1, **SMALL, dtype="bfloat16").apply(params, x, t, y)
    assert half.dtype == jnp.float32 and np.abs(full).max() > 0.1
    assert float(jnp.linalg.norm(half - full) / jnp.linalg.norm(full)) < 0.03  # bfloat16 keeps 8 bits


def test_a_unet_config_switches_to_a_dit_by_name_and_size():
  config = tiny_config(**{"model.name": "dit", "model.size": "S/4"})  # the U-Net's own fields are left unused
  model = models.get_model(config)
  # the U-Net's own values of the fields both networks have (freq_shift, num_heads, norm_eps) do not carry over
  assert (model.size, model.num_classes, model.out_channels, model.freq_shift, model.num_heads) == ("S/4", 10, 1, 0, 0)
  with pytest.raises(ValueError, match=r"model 'ncsnpp' has no field\(s\) \['dtype'\]: leave them at"):
    models.get_model(tiny_config(**{"model.name": "ncsnpp", "model.dtype": "bfloat16"}))
  with pytest.raises(ValueError, match=r"model.context_dim=64 \(text conditioning\) needs a network with "
                                       r"cross-attention \(unet\); 'dit' takes class labels"):
    models.get_model(tiny_config(**{"model.name": "dit", "model.size": "S/4", "model.context_dim": 64}))


FSDP = """
import json, sys
import jax
from configs.base import model_defaults
from conftest import tiny_config
from diffusion_jax import parallel, train
config = tiny_config(**{"training.num_steps": 3, "training.log_every": 1, "parallel.fsdp": int(sys.argv[2])})
config.model = model_defaults("dit", depth=2, hidden_size=64, num_heads=4, patch_size=2, num_classes=10)
state = train.train(config, sys.argv[1])
specs = {jax.tree_util.keystr(k): [a.size, "fsdp" in str(a.sharding.spec)]
         for k, a in jax.tree_util.tree_leaves_with_path(state.params)}
print("DEVICES", jax.device_count(), "SPECS", json.dumps(specs))
"""


def test_fsdp_splits_every_large_dit_weight_and_trains_the_same(tmp_path):
  flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
  out = run_python(["-c", FSDP, str(tmp_path / "fsdp"), "2"], env_extra={"XLA_FLAGS": flags}).stdout
  devices, specs = re.search(r"DEVICES (\d+) SPECS (.*)", out).groups()
  specs = json.loads(specs)
  assert devices == "4" and len(specs) > 20
  assert all(split == (size >= parallel.MIN_SHARDED_SIZE) for size, split in specs.values()), specs
  run_python(["-c", FSDP, str(tmp_path / "one"), "1"])
  logged = lambda d: [r["loss"] for r in json.loads((tmp_path / d / "training_log.json").read_text())["records"]]
  assert len(logged("one")) == 3
  np.testing.assert_allclose(logged("fsdp"), logged("one"), rtol=1e-5)


def test_backbones_study_plans_one_point_per_backbone_and_measures_their_cost(tmp_path):
  from experiments import backbones_digits
  runs = backbones_digits.plan(str(tmp_path), seeds=2, steps=10)
  assert [r["combo"]["model.name"] for r in runs] == ["unet", "unet", "dit", "dit", "uvit", "uvit"]
  assert len({r["name"] for r in runs}) == 6 and all("--config.training.num_steps=10" in r["args"] for r in runs)
  params, gflops = backbones_digits.network_cost("configs/digits_dit.py")
  assert 0.5e6 < params < 1.5e6 and 0 < gflops < 1


def test_imagenet256_dit_config_is_the_papers_setup_and_has_a_local_variant():
  from configs.imagenet256_dit import get_config
  c = get_config()
  assert (c.model.size, c.model.learn_sigma, c.model.latent, c.optim.lr, c.optim.weight_decay, c.training.batch_size,
          c.training.ema_decay, c.training.num_steps, c.sample.runs) == \
      ("XL/2", True, True, 1e-4, 0.0, 256, 0.9999, 400_000, "ddpm:250:w=0.5")
  assert models.get_model(get_config("B/4")).size == "B/4"
  local = get_config("local")
  model, _ = build.setup(local)
  assert (model.size, local.data.image_size // 8) == ("S/2", 8)  # 16 tokens of the 8x8x4 latents
