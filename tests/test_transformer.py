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
