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
  assert getattr(model, "unet", model).out_channels == latent.diffusion_shape(config)[-1]  # text models wrap a U-Net
  assert get_classifier(config).num_classes == config.classifier.model.num_classes
  sample.check_sampling(config, process)  # every run's options, guidance and values, traced


def test_p2_configs_take_gamma():
  from configs.p2 import flowers
  assert (flowers.get_config().training.weighting, flowers.get_config().training.p2_gamma) == ("p2", 1.0)
  assert flowers.get_config("0.5").training.p2_gamma == 0.5 and flowers.get_config("0").training.weighting == "uniform"
  assert flowers.get_config().training.p2_k == 1.0 and flowers.get_config().diffusion.schedule == "linear"
