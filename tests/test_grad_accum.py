"""Gradient accumulation (training.grad_accum_steps = k): k microbatches summed inside the one compiled step reach
the parameters of the whole batch, rolled (lax.scan) or unrolled (with FSDP over two processes: test_distributed.py);
a k that does not divide the per-device batch names the valid ones; a resumed run may change k (test_train.py)."""
import jax
import numpy as np
import pytest

from conftest import tiny_config
from diffusion_jax import build, parallel, train
from diffusion_jax.data import get_dataset


SMALL = {"model.block_out_channels": (8, 16), "model.attn_resolutions": ()}


def trained_params(config, steps=3):
  """The parameters and last metrics after `steps` jitted train steps on the config's first batches."""
  model, process = build.setup(config)
  tx = build.model_optimizer(config)
  state = build.init_state(config, model, tx, jax.random.PRNGKey(config.seed))
  step = jax.jit(train.make_train_step(config, model, process, tx))
  data = get_dataset(config, "train")
  for i in range(steps):
    state, metrics = step(state, train.host_batch(config, data, i))
  return jax.tree.map(np.asarray, state.params), metrics


@pytest.mark.parametrize("kernels,k", [("cpu", 2), ("xla", 4)], ids=["unrolled", "scan"])
def test_microbatches_reach_the_parameters_of_the_whole_batch(kernels, k):
  # label dropout (p_uncond) and importance-sampled t draw per example from its global index: k changes nothing
  over = {"model.kernels": kernels, "training.batch_size": 8, "training.p_uncond": 0.3, **SMALL,
          "training.t_sampling": "importance", "training.weighting": "p2"}
  whole, m1 = trained_params(tiny_config(**over, **{"training.grad_accum_steps": 1}))
  scale = max(np.abs(b).max() for b in jax.tree.leaves(whole))
  split, mk = trained_params(tiny_config(**over, **{"training.grad_accum_steps": k}))
  for a, b in zip(jax.tree.leaves(split), jax.tree.leaves(whole)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale)
  for key in ("loss", "eps_mse", "grad_norm"):
    assert float(mk[key]) == pytest.approx(float(m1[key]), rel=1e-5)
  np.testing.assert_allclose(mk["bin_count"], m1["bin_count"])


def test_microbatch_j_holds_every_kth_row_so_each_device_keeps_its_rows():
  batch = {"image": np.arange(8)[:, None], "index": np.arange(8)}
  micro = train.microbatches(batch, 2)
  np.testing.assert_array_equal(micro["index"], [[0, 2, 4, 6], [1, 3, 5, 7]])
  # 2 devices hold rows 0-3 and 4-7: microbatch 0 takes 0, 2 from the first and 4, 6 from the second


def test_an_accumulation_that_does_not_divide_the_per_device_batch_names_the_valid_ones():
  mesh = parallel.make_mesh()
  with pytest.raises(ValueError, match=r"grad_accum_steps=3 must divide the per-device batch of 32 .* valid: 1, 2, 4, "
                                       r"8, 16, 32"):
    train.check_accumulation(tiny_config(**{"training.grad_accum_steps": 3}), mesh)
  with pytest.raises(ValueError, match="valid: 1, 2, 4"):
    train.check_accumulation(tiny_config(**{"training.grad_accum_steps": 0, "training.batch_size": 4}), mesh)
