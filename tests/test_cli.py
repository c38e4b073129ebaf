"""The command line end to end on the tiny config: train, sample, evaluate, report."""
import json
import os

import pytest

from conftest import run_python


def test_cli_all_modes(tmp_path):
  wd = str(tmp_path / "run")
  run_python(["-m", "diffusion_jax.main", "--config=tests/tiny_config.py", f"--workdir={wd}", "--mode=all",
              "--config.training.num_steps=4", "--config.sample.runs=ddpm:10,ddim:5", "--config.eval.enable_bpd=True",
              "--config.eval.bpd_num_images=4", "--config.eval.bpd_num_bins=17"])
  assert "4" in os.listdir(os.path.join(wd, "checkpoints"))
  for name in ("ddpm_10", "ddim_5"):
    assert os.path.exists(os.path.join(wd, "samples", f"{name}.png"))
    assert os.path.exists(os.path.join(wd, "samples", f"{name}.npz"))
  with open(os.path.join(wd, "results.json")) as f:
    results = json.load(f)
  runs = {r["run"]: r for r in results["rows"]}
  assert set(runs) == {"real held-out images", "gaussian noise", "ddpm_10", "ddim_5"}
  assert runs["ddpm_10"]["nfe"] == 10 and runs["ddim_5"]["steps"] == 5
  assert 0.0 <= runs["ddpm_10"]["class_accuracy"] <= 1.0
  assert results["likelihood"]["num_images"] == 4 and 0 < results["likelihood"]["bpd"] < 20
  report = open(os.path.join(wd, "report.md")).read()
  assert "bits/dim" in report
  assert "| ddim_5 | ddim | 5 | 5 |" in report and "samples/ddpm_10.png" in report


def test_bad_mode(tiny, tmp_path):
  from diffusion_jax.main import run
  with pytest.raises(ValueError, match="valid modes: train, sample, eval, all, train_classifier"):
    run(tiny(), str(tmp_path), "fit")
