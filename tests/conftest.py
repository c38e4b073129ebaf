"""Shared fixtures: a tiny digits config that trains in seconds, and helpers to run code in subprocesses."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusion_jax.xla_flags import set_cpu_flags  # noqa: E402

# Tests compile far more than they compute: XLA's backend optimisations off roughly halves compile time of the tiny
# networks (the CLI and benchmarks keep them on). Subprocesses inherit the flags, so in-process and subprocess runs
# still agree bit for bit.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
set_cpu_flags()  # plus the CLI's own flags
# XLA compilation dominates the tiny tests (flax init alone compiles for ~15 s): share compiled programs
# between tests and their subprocesses through JAX's persistent cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def tiny_config(**overrides):
  from configs.digits import get_config
  c = get_config()
  c.model.block_out_channels = (16, 32)
  c.model.layers_per_block = 1
  c.model.norm_groups = 4
  c.training.batch_size = 32
  c.training.num_steps = 6
  c.training.log_every = 2
  c.training.checkpoint_every = 3
  c.training.sample_every = 0
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 2
  c.sample.runs = "ddpm:10,ddim:5,dpm_solver++:4,edm:3,pc:4:predictor=euler_maruyama:corrector=none,ode:3:solver=heun"
  c.sample.num_samples = 40
  c.sample.batch_size = 40
  c.eval.classifier_steps = 100
  c.classifier.model.block_out_channels = (16, 32)
  c.classifier.model.norm_groups = 4
  c.classifier.training.num_steps = 100
  c.classifier.training.batch_size = 64
  c.classifier.training.eval_every = 50
  c.classifier.optim.lr = 2e-3
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


@pytest.fixture
def tiny():
  return tiny_config


def random_params(module, *inputs, scale=0.1, seed=0):
  """Parameters of `module` drawn N(0, scale^2) on the host: no compilation (eager or jitted flax init compiles for
  15-30 s), and no zero-initialised layer hides the inputs' effect."""
  import jax
  import numpy as np
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *inputs)["params"])
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
  """(config, workdir, final state): the tiny config trained for its 6 steps, shared by the tests that need a
  checkpoint (they must not write into its checkpoints)."""
  from diffusion_jax import train
  wd = str(tmp_path_factory.mktemp("trained_tiny"))
  config = tiny_config()
  return config, wd, train.train(config, wd)


@pytest.fixture(scope="session")
def trained_classifier(tmp_path_factory):
  """(config, classifier directory, state): the tiny noise-conditional classifier trained for 100 steps."""
  from diffusion_jax.train_classifier import train_classifier
  d = str(tmp_path_factory.mktemp("classifier"))
  config = tiny_config(**{"classifier.workdir": d})
  return config, d, train_classifier(config, "unused")


def run_python(code_or_args, env_extra=None, timeout=600, check=True):
  """Runs `python -c code` (str) or `python args...` (list) from the repo root; returns CompletedProcess."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]), **(env_extra or {}))
  args = [sys.executable] + (["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args)
  proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc


@pytest.fixture(scope="session")
def tiny_tfds_dir(tmp_path_factory):
  """The data_dir of tests/tiny_tfds.py's dataset `tiny_images`, prepared once per test worker."""
  import tiny_tfds
  return tiny_tfds.prepare(tmp_path_factory.mktemp("tfds"))
