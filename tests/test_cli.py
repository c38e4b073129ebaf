"""The command line end to end on the tiny config: train, sample, evaluate, report (run by the ablation runner)."""
import json
import os

import pytest

from conftest import ROOT
from experiments import ablate


def test_cli_all_modes_through_an_ablation_run(tmp_path, monkeypatch):
  """main.py --mode=all (train, sample, evaluate with bits/dim, report) as the ablation runner's command line runs it,
  then the runner's aggregation of that run."""
  monkeypatch.chdir(ROOT)
  out = str(tmp_path)
  runs = ablate.plan("tests/tiny_config.py", ["training.weighting=uniform"],
                     ["training.num_steps=4", "sample.runs=ddpm:10,ddim:5,mine:4", "imports=plugin_sampler",
                      "eval.enable_bpd=True",
                      "eval.bpd_num_images=4", "eval.bpd_num_bins=17"], 1, out)
  status = ablate.execute(runs, out)
  wd = os.path.join(out, "runs", runs[0]["name"])
  assert status == {runs[0]["name"]: "done"}, open(os.path.join(wd, "log.txt")).read()[-3000:]
  assert "4" in os.listdir(os.path.join(wd, "checkpoints"))
  for name in ("ddpm_10", "ddim_5", "mine_4"):  # mine: tests/plugin_sampler.py, registered by config.imports
    assert os.path.exists(os.path.join(wd, "samples", f"{name}.png"))
    assert os.path.exists(os.path.join(wd, "samples", f"{name}.npz"))
  with open(os.path.join(wd, "results.json")) as f:
    results = json.load(f)
  rows = {r["run"]: r for r in results["rows"]}
  assert set(rows) == {"real held-out images", "gaussian noise", "ddpm_10", "ddim_5", "mine_4"}
  assert rows["ddpm_10"]["nfe"] == 10 and rows["ddim_5"]["steps"] == 5 and rows["mine_4"]["nfe"] == 4
  assert 0.0 <= rows["ddpm_10"]["class_accuracy"] <= 1.0
  assert results["likelihood"]["num_images"] == 4 and 0 < results["likelihood"]["bpd"] < 20
  report = open(os.path.join(wd, "report.md")).read()
  assert "bits/dim" in report
  assert "| ddim_5 | ddim | 5 | 5 |" in report and "| mine_4 | mine | 4 | 4 |" in report
  assert "samples/ddpm_10.png" in report
  row, = ablate.write_results(runs, out, status)
  assert row["seeds"] == 1 and row["ddim_5/fid_digits_mean"] > 0 and row["loss_mean"] > 0
  assert os.path.exists(os.path.join(out, "cache", "digits_classifier.msgpack"))  # shared by every run


def test_bad_mode(tiny, tmp_path):
  from diffusion_jax.main import run
  with pytest.raises(ValueError, match="valid modes: train, sample, eval, all, train_classifier"):
    run(tiny(), str(tmp_path), "fit")


def test_set_cpu_flags_adds_the_device_split_and_keeps_flags_already_set(monkeypatch):
  from diffusion_jax import xla_flags
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
  xla_flags.set_cpu_flags()
  assert os.environ["XLA_FLAGS"].split() == ["--xla_backend_optimization_level=0", *xla_flags.CPU_FLAGS]
  xla_flags.set_cpu_flags(devices=2)  # adds the split once, the other flags are not repeated
  assert os.environ["XLA_FLAGS"].split() == ["--xla_backend_optimization_level=0", *xla_flags.CPU_FLAGS,
                                             "--xla_force_host_platform_device_count=2"]
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  xla_flags.set_cpu_flags(devices=xla_flags.cpu_cores())  # the user's own split wins
  assert os.environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=1", *xla_flags.CPU_FLAGS]
  assert 1 <= xla_flags.cpu_cores() <= os.cpu_count()
  monkeypatch.delattr(os, "sched_getaffinity")  # as on macOS: every core counts
  assert xla_flags.cpu_cores() == os.cpu_count()
