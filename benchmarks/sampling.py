"""Sampling speed of every sampler: total seconds for one batch and milliseconds per network evaluation (NFE) of
its compiled loop (compilation excluded), for a named config with random weights; prints one JSON line per run.
Usage: python -m benchmarks.sampling --config=configs/digits.py [--batch=64 --runs=ddim:20,edm:10]"""
import json

import jax
from absl import app, flags
from ml_collections import config_flags

from diffusion_jax import parallel
from diffusion_jax.sample import generate_samples, run_label
from diffusion_jax.samplers import parse_runs
from diffusion_jax.build import init_state, make_optimizer, setup

RUNS = ("ddpm:100,ddim:20,dpm_solver++:20,edm:10,pc:50:predictor=euler_maruyama:corrector=none,"
        "pc:25:predictor=reverse_diffusion:corrector=langevin,ode:10:solver=heun,ode:20:solver=euler,"
        "ode:20:rtol=0.001:atol=0.001")

_CONFIG = config_flags.DEFINE_config_file("config", "configs/digits.py", "Experiment config.")
_BATCH = flags.DEFINE_integer("batch", 64, "Images per batch.")
_RUNS = flags.DEFINE_string("runs", RUNS, "Sampler runs, name:steps[:key=value], as in config.sample.runs.")


def main(_):
  config = _CONFIG.value
  config.sample.batch_size = _BATCH.value
  mesh = parallel.make_mesh()
  model, process = setup(config)
  params = init_state(config, model, make_optimizer(config.optim), jax.random.PRNGKey(0)).params
  for name, steps, kw in parse_runs(_RUNS.value):
    _, _, seconds, nfe = generate_samples(config, model, process, params, mesh, name, steps, _BATCH.value,
                                          jax.random.PRNGKey(1), **kw)
    print(json.dumps({"benchmark": "sampling", "config": config.data.name, "run": run_label(name, steps, kw),
                      "batch_size": _BATCH.value, "nfe": int(round(nfe)), "seconds": round(seconds, 3),
                      "ms_per_nfe": round(1000 * seconds / nfe, 2), "devices": jax.device_count(),
                      "backend": jax.default_backend()}), flush=True)


if __name__ == "__main__":
  app.run(main)
