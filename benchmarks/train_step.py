"""Training throughput (images/s) of the jitted train step for a named config; prints JSON.
Usage: python -m benchmarks.train_step --config=configs/digits.py [--steps=30]"""
import json
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from diffusion_jax import parallel
from diffusion_jax.data import get_dataset
from diffusion_jax.train import host_batch, make_train_step
from diffusion_jax.build import init_state, make_optimizer, setup
from diffusion_jax.models.remat import compiler_options

_CONFIG = config_flags.DEFINE_config_file("config", "configs/digits.py", "Experiment config.")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps (after 3 warm-up steps).")


def main(_):
  config = _CONFIG.value
  mesh = parallel.make_mesh()
  model, schedule = setup(config)
  tx = make_optimizer(config.optim)
  rep = parallel.replicated(mesh)
  state = jax.jit(lambda r: init_state(config, model, tx, r), out_shardings=rep)(jax.random.PRNGKey(0))
  step = jax.jit(make_train_step(config, model, schedule, tx), in_shardings=(rep, parallel.batch_sharded(mesh)),
                 out_shardings=(rep, rep), donate_argnums=0, compiler_options=compiler_options(config.model.remat))
  data = get_dataset(config, "train")
  batches = [parallel.shard_batch(host_batch(config, data, i), mesh) for i in range(4)]
  for i in range(3):
    state, m = step(state, batches[i % 4])
  jax.block_until_ready(m)
  t = time.perf_counter()
  for i in range(_STEPS.value):
    state, m = step(state, batches[i % 4])
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t) / _STEPS.value
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  print(json.dumps({"benchmark": "train_step", "config": config.data.name, "batch_size": config.training.batch_size,
                    "params": int(n_params), "steps_per_sec": round(1 / dt, 3),
                    "images_per_sec": round(config.training.batch_size / dt, 1),
                    "devices": jax.device_count(), "backend": jax.default_backend()}))


if __name__ == "__main__":
  app.run(main)
