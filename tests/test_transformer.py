"""The spatial transformer (self- and cross-attention blocks of latent diffusion's U-Net) against diffusers'
Transformer2DModel (PyTorch, CPU) with the same random weights, to 1e-4."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import convert
from diffusion_jax.models.transformer import SpatialTransformer, diffusers_key


@pytest.mark.parametrize("linear_projection", [False, True])  # SD 1.x (1x1 convs) and SD 2.x (linear)
def test_matches_diffusers(linear_projection):
  import torch
  from diffusers import Transformer2DModel
  torch.manual_seed(0)
  theirs = Transformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=32, norm_num_groups=8,
                              cross_attention_dim=12, num_layers=2, use_linear_projection=linear_projection).eval()
  with torch.no_grad():
    for p in theirs.parameters():
      p.add_(0.1 * torch.randn_like(p))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 4, 6, 32)).astype(np.float32)
  context = rng.normal(size=(2, 5, 12)).astype(np.float32)
  ours = SpatialTransformer(heads=2, head_dim=8, depth=2, groups=8, linear_projection=linear_projection)
  abstract = jax.eval_shape(ours.init, jax.random.PRNGKey(0), jnp.asarray(x), jnp.asarray(context))["params"]
  params = convert.convert_params({k: v.numpy() for k, v in theirs.state_dict().items()}, abstract, key=diffusers_key)
  with torch.no_grad():
    ref = theirs(torch.from_numpy(x.transpose(0, 3, 1, 2)), encoder_hidden_states=torch.from_numpy(context)).sample
  out = ours.apply({"params": params}, jnp.asarray(x), jnp.asarray(context))
  np.testing.assert_allclose(out, ref.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
  moved = ours.apply({"params": params}, jnp.asarray(x), jnp.asarray(context[::-1]))
  assert not np.allclose(moved[0], out[0], atol=1e-3)  # the context steers the output


def test_conditional_unet_matches_diffusers():
  """A small UNet2DConditionModel (Stable Diffusion's layout: cross-attention levels, padded downsampling, SD's time
  embedding) converted by convert.unet_overrides / convert_params gives diffusers' output to 1e-4."""
  import torch
  from diffusers import UNet2DConditionModel
  from configs.base import get_base_config
  from diffusion_jax.build import setup
  torch.manual_seed(0)
  theirs = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24,
                                attention_head_dim=2, norm_num_groups=8).eval()
  with torch.no_grad():
    for p in theirs.parameters():
      p.add_(0.05 * torch.randn_like(p))
  config = get_base_config()
  for key, value in convert.unet_overrides(dict(theirs.config)).items():
    section, field = key.split(".")
    config[section][field] = value
  assert (config.model.context_dim, config.model.num_heads, config.model.downsample_padding) == (24, 2, 1)
  config.text.encoder.hidden_size = 24  # the text encoder in front of the U-Net (not compared here)
  params = convert.convert_params({k: v.numpy() for k, v in theirs.state_dict().items()},
                                  convert.abstract_params(config)["unet"])
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
  context = rng.normal(size=(2, 7, 24)).astype(np.float32)
  t = np.array([10, 999], np.float32)
  with torch.no_grad():
    ref = theirs(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t),
                 encoder_hidden_states=torch.from_numpy(context)).sample.numpy().transpose(0, 2, 3, 1)
  model = setup(config)[0].unet
  out = model.apply({"params": params}, jnp.asarray(x), jnp.asarray(t), jnp.asarray(context))
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
  with pytest.raises(ValueError, match=r"takes y = a context sequence \[B, M, 24\], got \(2,\)"):
    model.apply({"params": params}, jnp.asarray(x), jnp.asarray(t), jnp.zeros((2,), jnp.int32))
  bad = {**dict(theirs.config), "only_cross_attention": True}
  with pytest.raises(ValueError, match="Unsupported UNet2DConditionModel setting only_cross_attention=True"):
    convert.unet_overrides(bad)
