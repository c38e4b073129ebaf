"""The KL autoencoder against diffusers' AutoencoderKL (PyTorch, CPU) with the same random weights: encoder moments
and decoder output to 1e-4; the KL term against its closed form."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import build, convert
from diffusion_jax.models.autoencoder import AutoencoderKL, kl_to_standard_normal

TINY = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32), layers_per_block=1,
            latent_channels=4, norm_num_groups=8, sample_size=16)


@pytest.fixture(scope="module")
def pair():
  import torch
  from diffusers import AutoencoderKL as TorchVAE
  torch.manual_seed(0)
  vae = TorchVAE(**TINY).eval()
  with torch.no_grad():
    for p in vae.parameters():
      p.add_(0.05 * torch.randn_like(p))
  ours = AutoencoderKL(out_channels=3, block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4,
                       norm_groups=8)
  abstract = jax.eval_shape(ours.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), jax.random.PRNGKey(1))
  params = convert.convert_params({k: v.numpy() for k, v in vae.state_dict().items()}, abstract["params"],
                                  key=convert.vae_key)
  return vae, ours, params


def test_matches_diffusers(pair):
  import torch
  vae, ours, params = pair
  x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():
    dist = vae.encode(torch.from_numpy(x.transpose(0, 3, 1, 2))).latent_dist
    z = dist.mean
    decoded = vae.decode(z).sample.numpy().transpose(0, 2, 3, 1)
  mean, logvar = ours.apply({"params": params}, jnp.asarray(x), method=AutoencoderKL.encode)
  assert mean.shape == (2, 4, 4, 4) and ours.downsampling == 4
  np.testing.assert_allclose(mean, dist.mean.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(logvar, dist.logvar.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
  out = ours.apply({"params": params}, mean, method=AutoencoderKL.decode)
  np.testing.assert_allclose(out, decoded, rtol=1e-4, atol=1e-4 * float(np.abs(decoded).max()))


def test_kl_closed_form():
  rng = np.random.default_rng(1)
  mean, logvar = rng.normal(size=(3, 2, 2, 4)), rng.normal(size=(3, 2, 2, 4))
  var = np.exp(logvar)
  expected = 0.5 * (mean ** 2 + var - 1 - logvar).reshape(3, -1).sum(1)  # KL(N(m, v) || N(0, 1)) per dimension
  np.testing.assert_allclose(kl_to_standard_normal(jnp.asarray(mean), jnp.asarray(logvar)), expected, rtol=1e-5)
  np.testing.assert_allclose(kl_to_standard_normal(jnp.zeros((1, 3)), jnp.zeros((1, 3))), [0.0], atol=1e-7)


AE = {"autoencoder.model": dict(block_out_channels=(16, 32), layers_per_block=1, latent_channels=2, norm_groups=4),
      "autoencoder.training.num_steps": 120, "autoencoder.training.batch_size": 32,
      "autoencoder.training.checkpoint_every": 100, "autoencoder.training.log_every": 40,
      "autoencoder.optim.warmup_steps": 10, "autoencoder.scale_num_images": 256}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(config, workdir, state, stats): a small autoencoder (f = 2: 8x8 digits -> 4x4x2 latents) trained 120 steps."""
  from conftest import tiny_config
  from diffusion_jax.train_autoencoder import train_autoencoder
  workdir = str(tmp_path_factory.mktemp("latent"))
  config = tiny_config(**AE)
  state, stats = train_autoencoder(config, workdir)
  return config, workdir, state, stats


def test_train_autoencoder_on_digits(trained):
  """It learns to reconstruct held-out digits; the scale factor whitens its latents; a longer run resumes."""
  import json
  import os
  from diffusion_jax.data import get_dataset
  from diffusion_jax.train_autoencoder import latent_std, train_autoencoder
  from diffusion_jax.build import get_autoencoder
  c, workdir, state, stats = trained
  variance = float(np.var(get_dataset(c, "eval").images))
  assert stats["latent_shape"] == [4, 4, 2] and stats["held_out_mse"] < 0.25 * variance, (stats, variance)
  with open(os.path.join(workdir, "autoencoder", "latent_scale.json")) as f:
    saved = json.load(f)
  assert saved["scale_factor"] == pytest.approx(1 / saved["latent_std"])
  std, _ = latent_std(get_autoencoder(c), state.ema_params, get_dataset(c, "train").images[:256], 32)
  assert std * saved["scale_factor"] == pytest.approx(1.0, rel=1e-5)  # scaled latents have unit std
  assert os.path.exists(os.path.join(workdir, "autoencoder", "reconstructions.png"))
  longer = c.copy_and_resolve_references()
  longer.autoencoder.training.num_steps = 125
  assert int(train_autoencoder(longer, workdir)[0].step) == 125


def test_text_to_image_latent_diffusion_trains_and_samples_images(trained, tmp_path):
  """model.latent + model.context_dim: a text encoder and a cross-attention U-Net train jointly on the 4x4x2 latents of
  captioned digits; DDIM with classifier-free guidance (null = the empty prompt's ids) runs unchanged and its samples
  come back as 8x8 images; bad settings are named."""
  import json
  import os
  from conftest import tiny_config
  from diffusion_jax import latent, parallel, sample, text, train
  _, ae_workdir, _, _ = trained
  over = {**AE, "autoencoder.workdir": os.path.join(ae_workdir, "autoencoder"), "model.latent": True,
          "model.context_dim": 16, "model.num_heads": 2, "training.p_uncond": 0.2,
          "text.encoder": dict(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                               num_attention_heads=2, max_position_embeddings=12, eos_token_id=3),
          "sample.clip_x0": False, "sample.runs": "ddim:5:w=2", "sample.num_samples": 20, "sample.batch_size": 20}
  c = tiny_config(**over)
  assert latent.diffusion_shape(c) == (4, 4, 2)
  state = train.train(c, str(tmp_path))
  assert set(state.params) == {"text_encoder", "unet"}
  assert (state.params["unet"]["conv_in"]["kernel"].shape[2] == 2
          and state.params["unet"]["conv_out"]["kernel"].shape[3] == 2)
  assert "class_embedding" not in state.params["unet"]  # the classes are named in the captions
  model, process = build.setup(c)
  mesh = parallel.mesh_for(c)
  records = sample.sample(c, str(tmp_path), state.ema_params, model, process, mesh)
  assert [r["run"] for r in records] == ["ddim_5_w2"]
  saved = np.load(tmp_path / "samples" / "ddim_5_w2.npz")
  images = saved["images"]
  assert images.shape == (20, 8, 8, 1) and np.abs(images).max() <= 1.0 and np.std(images) > 0.05
  np.testing.assert_array_equal(saved["labels"], np.arange(20) % 10)  # prompts name the sampled classes
  tok = text.get_text(c).tokenizer
  assert tok.decode(text.sample_conditions(c, saved["labels"][:2], 2)[1],
                    skip_special_tokens=True) == "a handwritten one"
  fixed = tiny_config(**{**over, "sample.prompt": "the digit 3"})
  assert sample.num_label_classes(fixed) == 0 and text.sample_conditions(fixed, None, 2).shape == (2, 12)
  with pytest.raises(ValueError, match="text.encoder.hidden_size=16 must equal model.context_dim=8"):
    build.setup(tiny_config(**{**over, "model.context_dim": 8}))
  # the text-to-image demo's report on this model: a guidance sweep, and prompts next to their samples
  from diffusion_jax.evaluation.features import metric_names
  from experiments import text_to_image_digits as t2i
  out = str(tmp_path / "t2i")
  sweep = t2i.sweep_w(c, str(tmp_path), out, ["1"], "ddim:3", 2)
  rows = t2i.prompt_grids(c, str(tmp_path), out, 1.0, "ddim:3", 2)
  t2i.write_report(out, sweep, rows, "ddim:3", 1.0, 2, metric_names(c.eval.features))
  assert [r["run"] for r in sweep] == ["ddim_3_w1.0"] and 0 <= sweep[0]["class_accuracy"] <= 1
  assert len(rows) == 20 and rows[0]["prompt"] == "a handwritten zero" and rows[-1]["seen_template"] is False
  assert all(os.path.getsize(os.path.join(out, f"prompts/{i:02d}.png")) > 100 for i in range(20))
  report = open(os.path.join(out, "report.md")).read()
  assert "| a handwritten zero | 0 | True |" in report and "![the digit 1](prompts/01.png)" in report
  assert "CLIPScore and CMMD need real CLIP weights" in report  # eval.features has no clip network here
  with pytest.raises(ValueError, match=r"sample.clip_x0=False"):
    sample.generate_samples(tiny_config(**{**over, "sample.clip_x0": True}), model, process, state.ema_params, mesh,
                            "ddim", 5, 4, None, latents=build.load_latents(c, str(tmp_path), mesh))
  with pytest.raises(FileNotFoundError, match="train one with --mode=train_autoencoder"):
    build.load_latents(tiny_config(**{**over, "autoencoder.workdir": str(tmp_path / "none")}), str(tmp_path), mesh)
  with pytest.raises(ValueError, match="autoencoder.model.latent_channels: checkpoint has 2, config has 3"):
    build.load_latents(tiny_config(**{**over, "autoencoder.model": {**AE["autoencoder.model"], "latent_channels": 3}}),
                str(tmp_path), mesh)
  with open(tmp_path / "samples" / "runs.json") as f:
    assert len(json.load(f)) == 1
