"""The kernel seam across whole networks: every network gives the same outputs and parameter gradients under the xla
and cpu kernel sets, and a checkpoint trained under one set samples under the other."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_params
from diffusion_jax.models.kernels import cpu


def _ncsnpp(kernels):
  from configs.digits_ncsnpp_ve import get_config
  from diffusion_jax.models import get_model
  c = get_config()
  c.model.update(dict(nf=16, fir=False, progressive_input="none", progressive="none", kernels=kernels))
  return get_model(c)


def _networks(tiny, dtype):
  """(name, kernels -> module, inputs) of every network: the U-Net with class labels and attention at 8x8 (64 tokens:
  blocked attention) and 4x4 (short attention), NCSN++ (BigGAN blocks, upsampling folded into the convolution), the
  text U-Net (CLIP text encoder + spatial transformers), the autoencoder, the noise-conditional classifier, DiT and
  U-ViT."""
  from diffusion_jax.models import get_model
  from diffusion_jax.models.autoencoder import AutoencoderKL
  from diffusion_jax.models.classifier import NoisyClassifier
  from diffusion_jax.models.dit import DiT
  from diffusion_jax.models.uvit import UViT
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  t, y = jnp.array([0.0, 10.0, 500.0, 999.0]), jnp.array([0, 1, 2, 10])
  ids = jnp.asarray(np.random.default_rng(0).integers(4, 128, (4, 16)), jnp.int32)
  unet = {"model.attn_resolutions": (8, 4), "model.num_classes": 10, "model.dtype": dtype}
  text = {"model.context_dim": 64, "model.num_heads": 2, "model.dtype": dtype}
  transformer = dict(depth=3, hidden_size=32, num_heads=4, patch_size=2, num_classes=10, dtype=dtype)
  return {"unet": (lambda k: get_model(tiny(**unet, **{"model.kernels": k})), (x, t, y)),
          "ncsnpp": (_ncsnpp, (x, jnp.array([0.01, 0.5, 3.0, 50.0]))),
          "text_unet": (lambda k: get_model(tiny(**text, **{"model.kernels": k})), (x, t, ids)),
          "autoencoder": (lambda k: AutoencoderKL(1, (16, 32), 1, 4, 4, kernels=k), (x, jax.random.PRNGKey(1))),
          "classifier": (lambda k: NoisyClassifier(10, (16, 32), norm_groups=4, kernels=k), (x, t)),
          "dit": (lambda k: DiT(1, **transformer, learn_sigma=True, kernels=k), (x, t, y)),
          "uvit": (lambda k: UViT(1, **transformer, kernels=k), (x, t, y))}


def _outputs_and_grads(module, params, inputs):
  """The network's outputs and the gradient of a random projection of them with respect to every parameter."""
  def loss(p):
    out = jax.tree.leaves(module.apply({"params": p}, *inputs))
    ws = [jax.random.normal(jax.random.PRNGKey(i), o.shape) for i, o in enumerate(out)]
    return sum(jnp.sum(w * o.astype(jnp.float32)) for w, o in zip(ws, out)), out
  (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return out, grads


def _relative_errors(a, b):
  """||a - b|| / ||b|| per leaf; a leaf whose reference is tiny next to the largest leaf of its tree (a key bias's
  gradient, zero up to rounding: the softmax ignores it) is measured against 1e-3 of that largest leaf."""
  norms = [float(jnp.linalg.norm(y)) for y in jax.tree.leaves(b)]
  floor = 1e-3 * max(norms)
  return {jax.tree_util.keystr(path): float(jnp.linalg.norm(x - y)) / max(n, floor)
          for (path, x), y, n in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), norms)}


@pytest.mark.parametrize("network", ["unet", "ncsnpp", "text_unet", "autoencoder", "classifier", "dit", "uvit"])
def test_every_network_computes_the_same_under_xla_and_cpu_kernels(tiny, network, monkeypatch):
  # the tiny shapes fall below the cpu set's Winograd thresholds: take Winograd (forward and gradients) everywhere
  monkeypatch.setattr(cpu, "use_winograd", lambda x, features: x.dtype == jnp.float32)
  monkeypatch.setattr(cpu, "winograd_trains", lambda x, features: True)
  make, inputs = _networks(tiny, "float32")[network]
  params = random_params(make("xla"), *inputs)
  (out_x, g_x), (out_c, g_c) = (_outputs_and_grads(make(k), params, inputs) for k in ("xla", "cpu"))
  for a, b in zip(out_c, out_x):
    assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b)) < 1e-5
  worst = max(_relative_errors(g_c, g_x).items(), key=lambda kv: kv[1])
  assert worst[1] < 1e-5, worst


def test_bfloat16_unet_agrees_under_xla_and_cpu_kernels(tiny):
  # within the tolerances of the bfloat16-versus-float32 tests of test_model.py
  make, inputs = _networks(tiny, "bfloat16")["unet"]
  params = random_params(make("xla"), *inputs)
  (out_x, g_x), (out_c, g_c) = (_outputs_and_grads(make(k), params, inputs) for k in ("xla", "cpu"))
  assert out_c[0].dtype == jnp.float32
  assert float(jnp.linalg.norm(out_c[0] - out_x[0]) / jnp.linalg.norm(out_x[0])) < 3e-2
  worst = max(_relative_errors(g_c, g_x).items(), key=lambda kv: kv[1])
  assert worst[1] < 0.1, worst


def test_a_checkpoint_trained_under_one_kernel_set_samples_under_the_other(trained_tiny):
  # trained under auto (= cpu here); restored and sampled under xla: the same parameters, the same samples
  from diffusion_jax import build, parallel, sample
  config, wd, _ = trained_tiny
  mesh = parallel.make_mesh()
  runs = {}
  for k in ("cpu", "xla"):
    c = config.copy_and_resolve_references()
    c.model.kernels = k
    model, process = build.setup(c)
    params = build.load_params(c, wd, mesh)
    runs[k] = sample.generate_samples(c, model, process, params, mesh, "ddim", 5, 8, jax.random.PRNGKey(0))[0]
  assert np.max(np.abs(runs["xla"] - runs["cpu"])) < 1e-4
