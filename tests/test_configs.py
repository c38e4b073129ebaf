"""Every shipped config builds: its model, process, classifier and sampler runs are valid (nothing is initialised)."""
import glob
import importlib
import os

import pytest

from conftest import ROOT
from diffusion_jax import build, latent, sample
from diffusion_jax.build import get_classifier

CONFIGS = sorted(os.path.relpath(p, ROOT)[:-3].replace(os.sep, ".")
                 for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
                 if os.path.basename(p) not in ("__init__.py", "base.py", "score_sde.py"))


def test_all_configs_are_listed():
  assert {"configs.digits", "configs.digits_cfg", "configs.digits_text", "configs.sd15", "configs.digits_classifier",
          "configs.imagenet64_cfg", "configs.cifar10_cfg", "configs.ve.cifar10_ncsnpp_continuous"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds(name):
  config = importlib.import_module(name).get_config()
  model, process = build.setup(config)
  network = getattr(model, "backbone", model)  # EDM's preconditioning wraps a network
  assert getattr(network, "unet", network).out_channels == latent.diffusion_shape(config)[-1]  # so do text models
  assert get_classifier(config).num_classes == config.classifier.model.num_classes
  sample.check_sampling(config, process)  # every run's options, guidance and values, traced


def test_p2_configs_take_gamma():
  from configs.p2 import flowers
  assert (flowers.get_config().training.weighting, flowers.get_config().training.p2_gamma) == ("p2", 1.0)
  assert flowers.get_config("0.5").training.p2_gamma == 0.5 and flowers.get_config("0").training.weighting == "uniform"
  assert flowers.get_config().training.p2_k == 1.0 and flowers.get_config().diffusion.schedule == "linear"


PATH_CONFIGS = ["configs.digits_rf", "configs.digits_edm", "configs.cifar10_edm", "configs.cifar10_rf"]


@pytest.mark.parametrize("name", PATH_CONFIGS)
def test_path_configs_take_a_training_step(name):
  # digits_rf with a tiny U-Net runs a step; the others are traced (jax.eval_shape: the whole step, no compilation)
  import jax
  import jax.numpy as jnp
  from diffusion_jax.train import make_train_step
  config = importlib.import_module(name).get_config()
  digits = "digits" in name
  if digits:
    config.model.block_out_channels, config.model.norm_groups, config.training.batch_size = (16, 32), 4, 8
  else:
    config.model.kernels = "xla"  # an accumulating config traces its step once, in a lax.scan, as on accelerators
  model, process = build.setup(config)
  tx = build.make_optimizer(config.optim)
  step = make_train_step(config, model, process, tx)
  s = config.data.image_size
  batch = {"image": jax.random.uniform(jax.random.PRNGKey(1), (8, s, s, config.data.channels))}  # k = 8 divides it
  if config.model.num_classes:
    batch["label"] = jnp.arange(batch["image"].shape[0]) % config.model.num_classes
  init = lambda rng: build.init_state(config, model, tx, rng)
  if name != "configs.digits_rf":
    _, metrics = jax.eval_shape(step, jax.eval_shape(init, jax.random.PRNGKey(0)), batch)
    assert metrics["loss"].shape == ()
    return
  state, metrics = jax.jit(step)(init(jax.random.PRNGKey(0)), batch)
  assert bool(jnp.isfinite(metrics["loss"])) and int(state.step) == 1
