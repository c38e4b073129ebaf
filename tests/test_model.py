import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_params, run_python
from diffusion_jax.models import get_model, make_model_fn
from diffusion_jax.models import layers
from diffusion_jax.models.layers import (Conv, Dense, GroupNorm, UpsampleConv, _tiles, blocked_attention,
                                         multihead_attention, short_attention, use_winograd, winograd_conv3x3,
                                         winograd_trains)
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
  with pytest.raises(ValueError, match="valid models: ncsnpp, unet"):
    get_model(c)


def test_timestep_embedding_matches_formula():
  e = timestep_embedding(jnp.array([3.0]), 8, freq_shift=1.0)
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 3.0)
  np.testing.assert_allclose(e[0], np.concatenate([np.sin(3 * freqs), np.cos(3 * freqs)]), rtol=1e-5)


def assert_same_layer(ours, ref, x, rtol=1e-5, ref_input=lambda x: x):
  """Same parameter tree, output and gradients (wrt parameters and input) as a flax layer applied to ref_input(x),
  random parameters."""
  ref_apply = lambda p, x: ref.apply(p, ref_input(x))
  p = ref.init(jax.random.PRNGKey(1), ref_input(x))
  assert jax.tree.structure(ours.init(jax.random.PRNGKey(1), x)) == jax.tree.structure(p)
  p = jax.tree.map(lambda a: a + jax.random.normal(jax.random.PRNGKey(2), a.shape), p)
  ref_out = ref_apply(p, x)
  atol = rtol * max(1.0, float(np.max(np.abs(ref_out))))  # scale-relative: Winograd's rounding grows with the output
  np.testing.assert_allclose(ours.apply(p, x), ref_out, rtol=rtol, atol=atol)
  w = jax.random.normal(jax.random.PRNGKey(3), ref_out.shape)
  grads = lambda f: jax.tree.leaves(jax.grad(lambda p, x: jnp.sum(w * f(p, x) ** 2), argnums=(0, 1))(p, x))
  for a, b in zip(grads(ours.apply), grads(ref_apply)):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.max(np.abs(b))))


class GroupNormSiLU(nn.GroupNorm):  # flax's GroupNorm then SiLU, with GroupNorm's parameter tree
  def __call__(self, x):
    return nn.silu(super().__call__(x))


@pytest.mark.parametrize("silu", [False, True])
def test_groupnorm_matches_flax(silu):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 6, 16)) * 3 + 1
  ref = (GroupNormSiLU if silu else nn.GroupNorm)(num_groups=4, epsilon=1e-6)
  assert_same_layer(GroupNorm(4, 1e-6, silu=silu), ref, x, rtol=1e-4)


@pytest.mark.parametrize("ours,ref", [(Conv(8, (3, 3), padding=1), nn.Conv(8, (3, 3), padding=1)),
                                      (Conv(8, (3, 3), strides=2, padding=0), nn.Conv(8, (3, 3), strides=2, padding=0)),
                                      (Conv(8, (1, 1), padding="VALID"), nn.Conv(8, (1, 1), padding="VALID")),
                                      (Dense(8), nn.Dense(8))])
def test_conv_and_dense_match_flax(ours, ref):  # their bias gradients are matrix products (layers.channel_sum)
  assert_same_layer(ours, ref, jax.random.normal(jax.random.PRNGKey(0), (3, 7, 6, 16)))


def test_layer_output_gradient_is_materialized_exactly_by_a_full_size_division():
  a = jnp.asarray([[0.0, -0.0, 1e-30, -3.4e38, 1.7], [np.inf, -np.inf, 2.0 ** -126, 7.0, -1e-7]], jnp.float32)
  # bit for bit, signed zeros included (XLA's CPU arithmetic flushes subnormals to zero everywhere, this division
  # like any other operation, so the smallest value here is the smallest normal float32)
  np.testing.assert_array_equal(layers.materialize(a), a)
  assert np.array_equal(np.signbit(layers.materialize(a)), np.signbit(a))
  x, w = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 8, 8, 16))
  grads = jax.jit(jax.grad(lambda x, b: jnp.sum(w * layers.add_bias(x * x, b) ** 2), (0, 1)))
  dx, db = grads(x, jnp.zeros(16))
  np.testing.assert_allclose(dx, 4 * w * x ** 3, rtol=1e-6)
  np.testing.assert_allclose(db, jnp.sum(2 * w * x ** 2, axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
  # the division survives XLA's simplifier at the gradient's full shape (a broadcast divisor would become a
  # multiplication by its reciprocal, which XLA duplicates into every reader)
  hlo = grads.lower(x, jnp.zeros(16)).compile().as_text()
  assert re.search(r"f32\[4,8,8,16\]\{[0-9,]*\} divide\(", hlo), "materialize's division was simplified away"


@pytest.mark.parametrize("trains", [False, True])
@pytest.mark.parametrize("shape,out", [((2, 8, 8, 64), 32), ((3, 10, 6, 20), 16), ((1, 5, 5, 4), 8)])
def test_winograd_conv_equals_direct_convolution(shape, out, trains, monkeypatch):  # H, W multiples of 4 or not
  monkeypatch.setattr(layers, "winograd_trains", lambda x, features: trains)
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  x, kernel = jax.random.normal(k[0], shape), jax.random.normal(k[1], (3, 3, shape[-1], out)) / np.sqrt(9 * shape[-1])
  direct = lambda x, kernel: jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
  ref = direct(x, kernel)
  assert float(jnp.max(jnp.abs(winograd_conv3x3(x, kernel) - ref))) < 2e-5 * float(jnp.max(jnp.abs(ref)))
  w = jax.random.normal(k[2], ref.shape)
  loss_grads = [jax.jit(jax.value_and_grad(lambda x, kernel: jnp.sum(w * jnp.sin(f(x, kernel))), (0, 1)))(x, kernel)
                for f in (winograd_conv3x3, direct)]
  for a, b in zip(*map(jax.tree.leaves, loss_grads)):
    if trains:  # Winograd's forward pass, input gradient and kernel gradient
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5 * float(jnp.max(jnp.abs(b))))
    else:  # the direct convolution and its gradients
      np.testing.assert_array_equal(a, b)


def test_conv_takes_winograd_on_large_float32_maps_and_matches_flax(monkeypatch):
  cpu = jax.default_backend() == "cpu"
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 30, 64))  # 4 x 8 x 8 = 256 tiles of 4x4
  monkeypatch.setattr(layers, "cpu_cores", lambda: 2 * jax.device_count())  # devices spanning several cores
  assert use_winograd(x, 8) == cpu
  assert not use_winograd(x[:2], 8) and not use_winograd(x[..., :32], 8) and not use_winograd(x.astype(jnp.bfloat16), 8)
  for padding in (1, "SAME"):
    assert_same_layer(Conv(8, (3, 3), padding=padding), nn.Conv(8, (3, 3), padding=padding), x, rtol=1e-4)
  monkeypatch.setattr(layers, "cpu_cores", lambda: jax.device_count())  # one core per device: work per device counts
  small = jnp.zeros((16, 8, 8, 32))  # 16 x 2 x 2 tiles x 32 x 32 channels = 2^16
  assert use_winograd(small, 32) == cpu and not use_winograd(small[:8], 32) and not use_winograd(small, 16)
  assert use_winograd(x[:1], 32) == cpu and not use_winograd(x[:1], 16)  # 64 tiles x 64 x 32 = 2^17, but 16 channels
  assert not use_winograd(jnp.zeros((64, 32, 32, 3)), 64)  # a 3-channel conv_in: 2x slower by Winograd
  big = jnp.zeros((4, 32, 32, 64))  # 256 tiles x 64 x 64 = 2^20: training takes Winograd too
  assert winograd_trains(big, 64) == cpu and not winograd_trains(big, 32) and not winograd_trains(small, 32)
  monkeypatch.setattr(layers, "cpu_cores", lambda: 2 * jax.device_count())
  assert not winograd_trains(big, 64)  # devices spanning several cores: XLA's direct convolution and gradients


def test_upsample_conv_is_nearest_upsampling_then_conv():  # the sub-pixel form: 2x2 convolutions per output phase
  nearest = lambda x: jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 3, 6))
  assert_same_layer(UpsampleConv(8), nn.Conv(8, (3, 3), padding=1), x, rtol=1e-4, ref_input=nearest)


def einsum_attention(q, k, v):  # the reference: softmax(q k^T / sqrt(d)) v over the whole score matrix
  return jax.nn.softmax(jnp.einsum("rqd,rkd->rqk", q, k) / np.sqrt(q.shape[-1]), -1) @ v


@pytest.mark.parametrize("n", [17, 32, 96, 100])
def test_row_max_equals_max(n):  # blocked_attention's softmax shift: 32-column slices when n divides into them
  s = jax.random.normal(jax.random.PRNGKey(n), (3, 5, n)) * 50
  np.testing.assert_array_equal(layers._row_max(s), jnp.max(s, axis=-1, keepdims=True))


@pytest.mark.parametrize("r,n,nk,tile,steps", [(3, 64, 64, 64 * 16, (1, 16)), (4, 16, 16, 2 * 16 * 16, (2, 16)),
                                               (3, 50, 50, 50 * 8, (1, 5)), (6, 16, 16, 10 ** 6, (6, 16)),
                                               (4, 1, 17, 2 * 17, (2, 1)), (2, 24, 5, 5 * 8, (1, 8))])
def test_blocked_attention_matches_einsum_and_grads(r, n, nk, tile, steps):
  # (rows, queries) per step: several query blocks, several row chunks, one step; fewer or more keys than queries
  assert _tiles(r, n, nk, tile) == steps
  k = jax.random.split(jax.random.PRNGKey(0), 4)
  q, kk, v = (jax.random.normal(k[i], (r, n if i == 0 else nk, 8)) * 2 for i in range(3))
  w = jax.random.normal(k[3], (r, n, 8))
  ours = lambda q, k, v: blocked_attention(q, k, v, tile)
  np.testing.assert_allclose(ours(q, kk, v), einsum_attention(q, kk, v), rtol=1e-5, atol=1e-5)
  g = lambda f: jax.grad(lambda *a: jnp.sum(w * f(*a)), argnums=(0, 1, 2))(q, kk, v)
  for a, b in zip(g(ours), g(einsum_attention)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


SHARDED_ATTENTION = """
from diffusion_jax.xla_flags import set_cpu_flags
set_cpu_flags(devices=2)
import jax, jax.numpy as jnp, numpy as np
from diffusion_jax import parallel
from diffusion_jax.models.layers import _tiles, blocked_attention
from test_model import einsum_attention
assert _tiles(12, 16, 16, 2 * 16 * 16) == (4, 16)  # 2 rows of each device's 6 per step
mesh = parallel.make_mesh()
q, k, v, w = (jax.random.normal(jax.random.PRNGKey(i), (12, 16, 8)) for i in range(4))
loss = lambda f: lambda q, k, v: jnp.sum(w * f(q, k, v))
ours = jax.jit(jax.value_and_grad(loss(lambda *a: blocked_attention(*a, 2 * 16 * 16)), argnums=(0, 1, 2)))
args = jax.device_put((q, k, v), parallel.batch_sharded(mesh))
hlo = ours.lower(*args).compile().as_text()
assert "all-gather" not in hlo and "all-to-all" not in hlo, "the rows left their devices"
(value, grads), (ref, ref_grads) = ours(*args), jax.value_and_grad(loss(einsum_attention), argnums=(0, 1, 2))(q, k, v)
np.testing.assert_allclose(value, ref, rtol=1e-5)
for a, b in zip(grads, ref_grads):
  assert a.sharding.spec == parallel.batch_sharded(mesh).spec
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
print("OK")
"""


def test_blocked_attention_keeps_a_sharded_batch_on_its_devices():
  # each device loops over its own rows of a batch split over 2 devices: no gather of q, k, v (which had made every
  # device compute the whole batch's attention), the same values and gradients
  assert run_python(SHARDED_ATTENTION).stdout.strip().endswith("OK")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_short_attention_matches_jax_dot_product_attention_and_grads(dtype):
  # [B, N, H, D], several heads, fewer keys than queries
  k = jax.random.split(jax.random.PRNGKey(2), 4)
  q, kk, v = (jax.random.normal(k[i], (2, 16 if i == 0 else 9, 3, 8)) * 2 for i in range(3))
  w = jax.random.normal(k[3], (2, 16, 3, 8))
  out = short_attention(*(a.astype(dtype) for a in (q, kk, v)))
  assert out.dtype == dtype
  tol = 1e-5 if dtype == jnp.float32 else 3e-2  # bfloat16 inputs and output rounding; float32 scores and sums
  np.testing.assert_allclose(out.astype(jnp.float32), jax.nn.dot_product_attention(q, kk, v), rtol=tol, atol=tol)
  g = lambda f: jax.grad(lambda *a: jnp.sum(w * f(*a)), argnums=(0, 1, 2))(q, kk, v)
  for a, b in zip(g(short_attention), g(jax.nn.dot_product_attention)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_attention_takes_the_short_form_only_for_short_narrow_heads(monkeypatch):
  calls = []
  monkeypatch.setattr(layers, "short_attention", lambda *a: calls.append("short") or jnp.zeros(a[0].shape))
  monkeypatch.setattr(layers, "blocked_attention", lambda *a: calls.append("blocked") or jnp.zeros(a[0].shape))
  for n, nk, d in [(16, 16, 8), (32, 32, 32), (16, 64, 8), (64, 64, 8), (16, 16, 64)]:
    layers.attention(*(jnp.zeros((2, m, 3, d)) for m in (n, nk, nk)))
  cpu = jax.default_backend() == "cpu"
  assert calls == (["short"] * 3 if cpu else ["blocked"] * 3) + ["blocked"] * 2


def test_multihead_attention_matches_jax_dot_product_attention():
  # head-major channel split, several heads, fewer keys than queries
  k = jax.random.split(jax.random.PRNGKey(1), 3)
  q, kk, v = (jax.random.normal(k[i], (2, 5 if i == 0 else 3, 12)) for i in range(3))
  heads = lambda a: a.reshape(*a.shape[:2], 3, 4)
  ref = jax.nn.dot_product_attention(heads(q), heads(kk), heads(v)).reshape(2, 5, 12)
  np.testing.assert_allclose(multihead_attention(q, kk, v, 3), ref, rtol=1e-5, atol=1e-5)
  q, kk, v = (jax.random.normal(k[i], (2, 40, 12)) for i in range(3))  # 40 x 40 scores: blocked_attention
  ref = jax.nn.dot_product_attention(heads(q), heads(kk), heads(v)).reshape(2, 40, 12)
  np.testing.assert_allclose(multihead_attention(q, kk, v, 3), ref, rtol=1e-5, atol=1e-5)


def test_scale_shift_conditioning_shapes(tiny):
  c = tiny(**{"model.scale_shift": True})
  shapes = jax.eval_shape(get_model(c).init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)),
                          jnp.zeros((1,), jnp.int32))["params"]
  assert shapes["down_0_resnet_0"]["time_emb_proj"]["kernel"].shape == (64, 32)  # 2 x 16 channels: scale and shift
  assert shapes["class_embedding"]["embedding"].shape == (11, 64)  # 10 classes + the null label
