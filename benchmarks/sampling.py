"""Sampling speed: milliseconds per network evaluation (NFE) of a compiled DDIM loop for a named config; prints JSON.
Usage: python -m benchmarks.sampling --config=configs/digits.py [--batch=500 --steps=20]"""
from diffusion_jax.xla_flags import set_cpu_flags

set_cpu_flags()

import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from diffusion_jax import parallel  # noqa: E402
from diffusion_jax.sample import generate_samples  # noqa: E402
from diffusion_jax.train import init_state, make_optimizer, setup  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/digits.py", "Experiment config.")
_BATCH = flags.DEFINE_integer("batch", 500, "Images per network evaluation.")
_STEPS = flags.DEFINE_integer("steps", 20, "DDIM steps (network evaluations) per timed loop.")


def main(_):
  config = _CONFIG.value
  config.sample.batch_size = _BATCH.value
  mesh = parallel.make_mesh()
  model, schedule = setup(config)
  params = init_state(config, model, make_optimizer(config.optim), jax.random.PRNGKey(0)).params
  _, _, seconds, _ = generate_samples(config, model, schedule, params, mesh, "ddim", _STEPS.value, _BATCH.value,
                                   jax.random.PRNGKey(1))
  print(json.dumps({"benchmark": "sampling", "config": config.data.name, "batch_size": _BATCH.value,
                    "ms_per_nfe": round(1000 * seconds / _STEPS.value, 2),
                    "images_per_sec_per_nfe": round(_BATCH.value * _STEPS.value / seconds, 1),
                    "devices": jax.device_count(), "backend": jax.default_backend()}))


if __name__ == "__main__":
  app.run(main)
