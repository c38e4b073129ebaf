"""Gradient checkpointing (config.model.remat, models/remat.py): under `full` and `dots` every network has the
parameter tree of `none` and the same loss and parameter gradients (dropout included), its blocks are rematerialised
(one checkpoint per block in the gradient's program, kept through XLA's CPU pipeline by remat.compiler_options; the
memory this saves: test_benchmarks.py), a checkpoint resumes under any policy, and an unknown policy names the valid
ones."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_params
from diffusion_jax import build, checkpoint
from diffusion_jax.models import get_model
from diffusion_jax.models.autoencoder import AutoencoderKL
from diffusion_jax.models.dit import DiT
from diffusion_jax.models.ncsnpp import NCSNpp
from diffusion_jax.models.remat import REMAT_POLICIES, compiler_options
from diffusion_jax.models.unet import UNet
from diffusion_jax.models.uvit import UViT

X = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
T, Y = jnp.array([10.0, 700.0]), jnp.array([3, 10])
CONTEXT = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 8))
X4 = X[:, :4, :4]  # the U-Nets': one level, attention over 16 positions
UNET = dict(block_out_channels=(16,), layers_per_block=1, attn_resolutions=(4,), norm_groups=4)
TRANSFORMER = dict(depth=3, hidden_size=32, num_heads=4, patch_size=2, num_classes=10)
# name: (policy -> module, apply's inputs, whether the call takes `train` (and dropout), rematerialised blocks)
NETWORKS = {
    # ResNet-attention down, mid ResNet-attention-ResNet, 2 x ResNet-attention up
    "unet": (lambda r: UNet(1, **UNET, num_classes=10, dropout=0.1, remat=r), (X4, T, Y), True, 9),
    # the same 5 ResNet blocks, and a spatial transformer of 2 transformer blocks at each of the 4 attention levels
    "text_unet": (lambda r: UNet(1, **UNET, num_heads=2, context_dim=8, transformer_depth=2, remat=r),
                  (X4, T, CONTEXT), True, 5 + 4 * 2),
    # BigGAN blocks: 2 down, 1 downsampling, mid ResNet-attention-ResNet, 4 up, 1 upsampling
    "ncsnpp": (lambda r: NCSNpp(1, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                                num_classes=10, remat=r), (X, T, Y), True, 11),
    "dit": (lambda r: DiT(1, **TRANSFORMER, learn_sigma=True, remat=r), (X, T, Y), False, 3),
    "uvit": (lambda r: UViT(1, **TRANSFORMER, remat=r), (X, T, Y), False, 3),  # a shallow, the middle, a deep block
    # encoder: a ResNet block, mid ResNet-attention-ResNet; decoder: the mid blocks, 2 ResNet blocks
    "autoencoder": (lambda r: AutoencoderKL(1, (16,), 1, 4, 4, remat=r), (X, jax.random.PRNGKey(2)), False, 9),
}
SAVEABLE = {"none": [], "full": [None], "dots": [jax.checkpoint_policies.dots_with_no_batch_dims_saveable]}


def _loss(module, inputs, train):
  """The sum of a fixed random projection of the network's outputs, with dropout on where the network has it."""
  kw = dict(train=True, rngs={"dropout": jax.random.PRNGKey(3)}) if train else {}

  def loss(params):
    out = jax.tree.leaves(module.apply({"params": params}, *inputs, **kw))
    ws = [jax.random.normal(jax.random.PRNGKey(i), o.shape) for i, o in enumerate(out)]
    return sum(jnp.sum(w * o) for w, o in zip(ws, out))
  return loss


def _remat_policies(jaxpr):
  """The policies of the rematerialised calls in a program (None: save nothing), nested calls included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("checkpoint", "remat2"):  # jax.checkpoint's primitive (remat2 in jax 0.10)
      yield eqn.params["policy"]
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          yield from _remat_policies(sub)


def _loss_and_grads(name, policy, params):
  """The loss and parameter gradients of network `name` under remat `policy`, checking first that the gradient's
  program rematerialises each of the network's blocks under that policy (and nothing under `none`)."""
  make, inputs, train, blocks = NETWORKS[name]
  traced = jax.jit(jax.value_and_grad(_loss(make(policy), inputs, train))).trace(params)
  assert list(_remat_policies(traced.jaxpr.jaxpr)) == SAVEABLE[policy] * blocks
  return traced.lower().compile(compiler_options(policy))(params)


def _relative_errors(a, b):
  """max |a - b| / max |b| per leaf; a leaf whose reference is tiny next to the largest leaf of its tree (a key bias's
  gradient, zero up to rounding: the softmax ignores it) is measured against 1e-3 of that largest leaf."""
  peaks = jax.tree.map(lambda y: float(jnp.max(jnp.abs(y))), b)
  floor = 1e-3 * max(jax.tree.leaves(peaks))
  return {jax.tree_util.keystr(path): float(jnp.max(jnp.abs(x - y))) / max(peak, floor)
          for (path, x), y, peak in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b),
                                        jax.tree.leaves(peaks))}


@pytest.fixture(scope="module", params=sorted(NETWORKS))
def network(request):
  """(name, random parameters, loss and gradients under `none`)."""
  make, inputs, _, _ = NETWORKS[request.param]
  params = random_params(make("none"), *inputs)
  return request.param, params, *_loss_and_grads(request.param, "none", params)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_checkpoints_every_block_and_keeps_parameters_loss_and_gradients(network, policy):
  # Not bit for bit: XLA compiles a rematerialised block as a region of its own, so its fusions and the order of its
  # float32 sums differ by rounding; 1e-5 of a gradient's largest entry is well below any real difference.
  name, params, loss, grads = network
  make, inputs, _, _ = NETWORKS[name]
  abstract = jax.eval_shape(lambda: make(policy).init(jax.random.PRNGKey(0), *inputs))["params"]
  assert jax.tree.map(lambda s: (s.shape, s.dtype), abstract) == jax.tree.map(lambda a: (a.shape, a.dtype), params)
  loss_r, grads_r = _loss_and_grads(name, policy, params)
  np.testing.assert_allclose(loss_r, loss, rtol=1e-5)
  errors = _relative_errors(grads_r, grads)
  assert max(errors.values()) <= 1e-5, f"{name} {policy}: {max(errors.items(), key=lambda e: e[1])}"


def test_the_compiled_program_keeps_the_recomputation():
  # XLA's CPU pipeline would expand the optimization barriers of jax.checkpoint, after which CSE merges the
  # recomputation into the forward pass; the compiler options keep them (accelerator compilers keep them anyway)
  make, inputs, train, _ = NETWORKS["dit"]
  params = random_params(make("none"), *inputs)
  for policy in ("full", "dots"):
    lowered = jax.jit(jax.grad(_loss(make(policy), inputs, train))).lower(params)
    assert "opt-barrier" in lowered.compile(compiler_options(policy)).as_text()
  assert compiler_options("none") == {}


def test_config_sets_every_networks_remat(tiny):
  assert get_model(tiny()).remat == "none"
  assert get_model(tiny(**{"model.remat": "full"})).remat == "full"
  assert build.get_autoencoder(tiny(**{"model.remat": "dots"})).remat == "dots"


def test_a_checkpoint_resumes_under_any_remat(tiny):
  saved = json.loads(tiny().to_json())
  for policy in REMAT_POLICIES:
    checkpoint.check_compatible(saved, tiny(**{"model.remat": policy}))
    checkpoint.check_compatible(saved, tiny(**{"model.remat": policy}), section="autoencoder.model")
  del saved["model"]["remat"]  # a checkpoint written before the field existed
  checkpoint.check_compatible(saved, tiny(**{"model.remat": "full"}))


def test_unknown_remat_names_the_valid_ones(tiny):
  with pytest.raises(ValueError, match="Unknown model.remat 'x'; valid: none, full, dots"):
    get_model(tiny(**{"model.remat": "x"}))
