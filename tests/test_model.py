
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_params
from diffusion_jax.models import get_model, make_model_fn
from diffusion_jax.models.unet import UNet, timestep_embedding
from diffusion_jax.schedules import get_schedule


def n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_cifar10_unet_has_ho_et_al_size():
  from configs.cifar10_ddpm import get_config
  c = get_config()
  model = get_model(c)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,)))
  assert n_params(shapes) == 35_746_307  # diffusers' google/ddpm-cifar10-32 UNet2DModel
  p = shapes["params"]
  assert p["down_1_attn_0"]["to_q"]["kernel"].shape == (256, 256)  # attention at 16x16 only
  assert "down_0_attn_0" not in p and "down_2_attn_0" not in p and "up_2_attn_0" in p


def test_unet_forward_and_class_conditioning(tiny):
  c = tiny()
  model = get_model(c)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  t = jnp.array([0.0, 10.0, 500.0, 999.0])
  params = random_params(model, x, t, jnp.zeros((4,), jnp.int32))
  y = jnp.array([0, 1, 2, 3])
  apply = jax.jit(lambda y: model.apply({"params": params}, x, t, y))
  out = apply(y)
  assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
  null = apply(jnp.full((4,), 10))
  np.testing.assert_allclose(apply(None), null, rtol=1e-6)  # y=None is the null label
  assert float(jnp.abs(out - null).max()) > 1e-4


def test_bfloat16_unet_is_mixed_precision_and_close_to_float32(tiny):
  model, model16 = get_model(tiny()), get_model(tiny(**{"model.dtype": "bfloat16"}))
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  t, y = jnp.array([0.0, 10.0, 500.0, 999.0]), jnp.array([0, 1, 2, 3])
  params = random_params(model, x, t, y)
  loss = lambda m: jax.jit(jax.value_and_grad(lambda p: jnp.mean((m.apply({"params": p}, x, t, y) - x) ** 2)))
  apply = lambda m: jax.jit(lambda p: m.apply({"params": p}, x, t, y))
  out, out16 = apply(model)(params), apply(model16)(params)
  assert out16.dtype == jnp.float32
  rel = float(jnp.linalg.norm(out16 - out) / jnp.linalg.norm(out))
  assert 1e-4 < rel < 3e-2  # bfloat16 activations (8 bits of mantissa), not float32, yet close
  (l32, g32), (l16, g16) = loss(model)(params), loss(model16)(params)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(g16))  # float32 gradients of the float32 parameters
  assert abs(float(l16 - l32)) < 1e-2 * float(l32)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g32), jax.tree.leaves(g16)):
    if "to_k" in str(path) and "bias" in str(path):
      continue  # exactly zero: a key bias shifts every score of a query alike, which the softmax ignores
    assert float(jnp.linalg.norm(b - a) / jnp.linalg.norm(a)) < 0.1, jax.tree_util.keystr(path)
  with pytest.raises(ValueError, match="'float16' is not supported; valid: float32, bfloat16"):
    get_model(tiny(**{"model.dtype": "float16"})).init(jax.random.PRNGKey(0), x, t, y)


def test_bfloat16_text_conditioned_unet_is_close_to_float32():
  # the spatial transformers' projections, LayerNorms and cross-attention to a float32 context
  kw = dict(out_channels=1, block_out_channels=(16, 32), layers_per_block=1, norm_groups=4, num_heads=2, context_dim=8)
  model, model16 = UNet(**kw), UNet(**kw, dtype="bfloat16")
  x, t = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1)), jnp.array([10.0, 700.0])
  context = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 8))
  params = random_params(model, x, t, context)
  out, out16 = (jax.jit(lambda p, m=m: m.apply({"params": p}, x, t, context))(params) for m in (model, model16))
  assert out16.dtype == jnp.float32
  assert 1e-4 < float(jnp.linalg.norm(out16 - out) / jnp.linalg.norm(out)) < 3e-2


def test_checkpoint_resumes_under_either_dtype(tiny):
  import json
  from diffusion_jax import checkpoint
  saved = json.loads(tiny().to_json())
  del saved["model"]["dtype"]  # a checkpoint written before the field existed
  checkpoint.check_compatible(saved, tiny(**{"model.dtype": "bfloat16"}))
  with pytest.raises(ValueError, match="model.norm_groups: checkpoint has 4, config has 8"):
    checkpoint.check_compatible(saved, tiny(**{"model.norm_groups": 8}))


def test_model_fn_maps_t_to_index(tiny):
  c = tiny()
  model, sched = get_model(c), get_schedule("linear", 1000)
  x = jnp.ones((2, 8, 8, 1))
  params = random_params(model, x, jnp.zeros((2,)), jnp.zeros((2,), jnp.int32))
  fn = jax.jit(make_model_fn(model, params, sched))
  y = jnp.array([3, 4])
  direct = jax.jit(lambda i: model.apply({"params": params}, x, i, y))
  np.testing.assert_allclose(fn(x, jnp.array([0.001, 1.0]), y), direct(jnp.array([0.0, 999.0])), rtol=1e-5, atol=1e-6)


def test_unknown_model_field_is_rejected(tiny):
  c = tiny()
  with c.unlocked():
    c.model.channel_multiplier = 2
  with pytest.raises(ValueError, match="channel_multiplier"):
    get_model(c)
  c = tiny(**{"model.name": "transformer"})
  with pytest.raises(ValueError, match="valid models: dit, ncsnpp, unet, uvit"):
    get_model(c)


def test_timestep_embedding_matches_formula():
  e = timestep_embedding(jnp.array([3.0]), 8, freq_shift=1.0)
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 3.0)
  np.testing.assert_allclose(e[0], np.concatenate([np.sin(3 * freqs), np.cos(3 * freqs)]), rtol=1e-5)


def test_scale_shift_conditioning_shapes(tiny):
  c = tiny(**{"model.scale_shift": True})
  shapes = jax.eval_shape(get_model(c).init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)),
                          jnp.zeros((1,), jnp.int32))["params"]
  assert shapes["down_0_resnet_0"]["time_emb_proj"]["kernel"].shape == (64, 32)  # 2 x 16 channels: scale and shift
  assert shapes["class_embedding"]["embedding"].shape == (11, 64)  # 10 classes + the null label
