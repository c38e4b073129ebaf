"""Data parallelism: the same steps on 1 device and on 8 simulated CPU devices give the same losses and parameters."""
import json

from conftest import run_python

CODE = r"""
import json, jax, numpy as np
from conftest import tiny_config
from diffusion_jax import parallel
from diffusion_jax.data import get_dataset
from diffusion_jax.train import host_batch, init_state, make_optimizer, make_train_step, setup

assert jax.device_count() == 8
cfg = tiny_config()
model, schedule = setup(cfg)
tx = make_optimizer(cfg.optim)
data = get_dataset(cfg, "train")
out = {}
for n in (1, 8):
  mesh = parallel.make_mesh(jax.devices()[:n])
  rep = parallel.replicated(mesh)
  state = jax.jit(lambda r: init_state(cfg, model, tx, r), out_shardings=rep)(jax.random.PRNGKey(0))
  step = jax.jit(make_train_step(cfg, model, schedule, tx), in_shardings=(rep, parallel.batch_sharded(mesh)),
                 out_shardings=(rep, rep))
  losses = []
  for i in range(4):
    batch = parallel.shard_batch(host_batch(cfg, data, i), mesh)
    assert len(batch["image"].sharding.device_set) == n
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  out[n] = (losses, [np.asarray(a) for a in jax.tree.leaves(state.params)])
l1, p1 = out[1]
l8, p8 = out[8]
np.testing.assert_allclose(l1, l8, rtol=1e-5)
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(p1, p8))
assert diff < 1e-5, diff
try:
  parallel.check_batch(12, parallel.make_mesh())
  raise SystemExit("expected an error")
except ValueError as e:
  assert "not divisible by the 8 devices" in str(e)
print(json.dumps({"losses_1": l1, "losses_8": l8, "max_param_diff": diff}))
"""


def test_one_vs_eight_devices_agree():
  proc = run_python(CODE, env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["losses_1"][0] > result["losses_1"][-1] * 0.5  # it really trains
