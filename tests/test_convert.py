"""Released diffusers checkpoints into this codebase: random diffusers UNet2DModels of the DDPM family (PyTorch, CPU)
converted by diffusion_jax.convert give PyTorch's outputs; old attention names and .bin files load; bad directories
are refused with what is wrong."""
import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

from diffusion_jax import build, convert, parallel
from diffusion_jax.config_files import load_config

# google/ddpm-cifar10-32's config.json, scaled down (channels, groups, size, one layer per block)
CIFAR10_LAYOUT = dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16, 16, 16),
                      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                      norm_num_groups=4, norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0,
                      act_fn="silu", center_input_sample=False, mid_block_scale_factor=1,
                      time_embedding_type="positional")
# the 256x256 releases (ddpm-celebahq-256, ddpm-church-256, ...): six levels, attention at the fifth
LSUN_LAYOUT = dict(CIFAR10_LAYOUT, sample_size=32, block_out_channels=(8, 8, 16, 16, 32, 32), layers_per_block=2,
                   down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4)
SCHEDULER = {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
             "num_train_timesteps": 1000, "clip_sample": True, "variance_type": "fixed_large"}


def save_release(directory, layout, seed=0, safe=True):
  """A random UNet2DModel (every weight perturbed, so no norm is the identity) saved as diffusers does, with the
  scheduler config of Ho et al."""
  torch.manual_seed(seed)
  unet = UNet2DModel(**layout).eval()
  with torch.no_grad():
    for p in unet.parameters():
      p.add_(0.1 * torch.randn_like(p))
  unet.save_pretrained(directory, safe_serialization=safe)
  with open(os.path.join(directory, "scheduler_config.json"), "w") as f:
    json.dump(SCHEDULER, f)
  return unet


@pytest.fixture(scope="module")
def cifar10_release(tmp_path_factory):
  src = str(tmp_path_factory.mktemp("release") / "ddpm-cifar10-32")
  unet = save_release(src, CIFAR10_LAYOUT)
  dst = str(tmp_path_factory.mktemp("converted"))
  return unet, src, dst, convert.convert_diffusers(src, dst)


def test_converted_unet_equals_pytorch(cifar10_release):
  unet, _, dst, config = cifar10_release
  assert config.data.tfds_name == "cifar10" and config.model.attn_resolutions == (8,)
  assert config.diffusion.schedule == "linear"
  assert config.sample.ddpm_variance == "beta" and config.sample.clip_x0
  params = build.load_params(config, dst, parallel.mesh_for(config))  # as main.py --mode=sample loads it
  model, _ = build.setup(config)
  x = np.random.default_rng(0).standard_normal((3, 16, 16, 3)).astype(np.float32)
  t = np.array([0, 421, 999], np.float32)
  ours = np.asarray(jax.jit(lambda p: model.apply({"params": p}, x, t))(params))
  with torch.no_grad():
    theirs = unet(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t)).sample.numpy().transpose(0, 2, 3, 1)
  assert np.abs(theirs).max() > 0.1
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_the_256_layout_and_old_attention_names_in_a_bin_file(cifar10_release, tmp_path):
  src = str(tmp_path / "ddpm-church-256")
  save_release(src, LSUN_LAYOUT, seed=1)
  config = convert.convert_diffusers(src, str(tmp_path / "church"))
  assert config.data.tfds_name == "lsun/church_outdoor" and config.model.attn_resolutions == (2,)
  # diffusers < 0.14 named the attention projections query / key / value / proj_attn; .bin is a torch pickle
  _, src, _, cifar_config = cifar10_release
  old = str(tmp_path / "old")
  shutil.copytree(src, old)
  state = {k: torch.from_numpy(v) for k, v in convert.load_state_dict(src).items()}
  old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  renamed = {}
  for k, v in state.items():
    for new, name in old_names.items():
      k = k.replace(new, name)
    renamed[k] = v
  assert renamed.keys() != state.keys()
  os.remove(os.path.join(old, "diffusion_pytorch_model.safetensors"))
  torch.save(renamed, os.path.join(old, "diffusion_pytorch_model.bin"))
  abstract = convert.abstract_params(cifar_config)
  a = convert.convert_params(convert.load_state_dict(old), abstract)
  b = convert.convert_params(convert.load_state_dict(src), abstract)
  assert all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_bad_releases_say_what_is_wrong(cifar10_release, tmp_path):
  _, src, _, config = cifar10_release
  abstract = convert.abstract_params(config)
  state = dict(convert.load_state_dict(src))
  del state["mid_block.attentions.0.to_k.bias"]
  state["mid_block.extra.weight"] = np.zeros(3)
  with pytest.raises(ValueError, match=r"missing 1 key\(s\) \['mid_block.attentions.0.to_k.bias'\]; unexpected 1 "
                                       r"key\(s\) \['mid_block.extra.weight'\]"):
    convert.convert_params(state, abstract)
  state = dict(convert.load_state_dict(src))
  state["conv_in.weight"] = np.zeros((8, 3, 5, 5), np.float32)
  with pytest.raises(ValueError, match=r"Parameter conv_in.weight: checkpoint shape \(8, 3, 5, 5\)"):
    convert.convert_params(state, abstract)
  with pytest.raises(ValueError, match=r"Unsupported down block type\(s\) \['CrossAttnDownBlock2D'\]; supported: "
                                       "DownBlock2D, AttnDownBlock2D"):
    convert.unet_overrides(dict(CIFAR10_LAYOUT, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D") * 2))
  with pytest.raises(ValueError, match="Unsupported UNet2DModel setting time_embedding_type='fourier'"):
    convert.unet_overrides(dict(CIFAR10_LAYOUT, time_embedding_type="fourier"))
  with pytest.raises(FileNotFoundError, match="No diffusion_pytorch_model.safetensors or .bin in"):
    convert.load_state_dict(str(tmp_path))


def test_ddim_table1_smoke_run_on_a_converted_random_release(cifar10_release, tmp_path):
  """experiments/reproduce_ddim_table1 end to end on the converted random-weight release: DDIM cells sampled and
  scored by the FID Inception network (random weights too), the table beside the published one, labelled a smoke
  test."""
  import flax.serialization

  from diffusion_jax.evaluation import inception, metrics
  from experiments import reproduce_ddim_table1 as table1
  from torch_fid_inception import random_network
  _, _, dst, _ = cifar10_release
  weights, stats = str(tmp_path / "inception.msgpack"), str(tmp_path / "reference.npz")
  with open(weights, "wb") as f:
    f.write(flax.serialization.to_bytes(inception.params_from_pytorch(random_network()[1])))
  metrics.save_stats(stats, np.zeros(2048), np.eye(2048))
  config = load_config(os.path.join(dst, "config.py"))
  config.eval.update(inception_weights=weights, reference_stats=stats, batch_size=12)
  config.sample.batch_size = 12
  out = str(tmp_path / "table")
  rows = table1.reproduce(config, dst, out, [10], [0.0, 1.0], 12, smoke=True)
  assert [(r["S"], r["eta"], r["nfe"], r["num_samples"]) for r in rows] == [(10, 0.0, 10, 12), (10, 1.0, 10, 12)]
  assert all(np.isfinite(r["fid_inception"]) for r in rows)
  report = open(os.path.join(out, "results.md")).read()
  assert "SMOKE TEST: 12 samples per cell" in report and "(13.36)" in report and "(41.07)" in report
  assert table1.runs(config, [10, 1000], [0.0])[1][3] == {"eta": 0.0, "spacing": "leading"}  # the full chain
