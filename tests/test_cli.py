"""The command line end to end on the tiny config: train, sample, evaluate, report."""
import json
import os

from conftest import run_python


def test_cli_all_modes(tmp_path):
  wd = str(tmp_path / "run")
  base = ["-m", "diffusion_jax.main", "--config=tests/tiny_config.py", f"--workdir={wd}"]
  run_python(base + ["--mode=train", "--config.training.num_steps=4"])
  assert os.listdir(os.path.join(wd, "checkpoints")) == ["4"] or "4" in os.listdir(os.path.join(wd, "checkpoints"))
  run_python(base + ["--mode=sample", "--config.training.num_steps=4"])
  for name in ("ddpm_10", "ddim_5"):
    assert os.path.exists(os.path.join(wd, "samples", f"{name}.png"))
    assert os.path.exists(os.path.join(wd, "samples", f"{name}.npz"))
  run_python(base + ["--mode=eval", "--config.training.num_steps=4", "--config.eval.enable_bpd=True",
                     "--config.eval.bpd_num_images=4", "--config.eval.bpd_num_bins=17"])
  with open(os.path.join(wd, "results.json")) as f:
    results = json.load(f)
  runs = {r["run"]: r for r in results["rows"]}
  assert set(runs) == {"real held-out digits", "gaussian noise", "ddpm_10", "ddim_5", "dpm_solver++_4", "edm_3",
                       "pc_4_correctornone_predictoreuler_maruyama", "ode_3_solverheun"}
  assert runs["edm_3"]["nfe"] == 5
  assert runs["ddpm_10"]["nfe"] == 10 and runs["ddim_5"]["steps"] == 5
  assert runs["pc_4_correctornone_predictoreuler_maruyama"]["nfe"] == 4 and runs["ode_3_solverheun"]["nfe"] == 7
  assert 0.0 <= runs["ddpm_10"]["class_accuracy"] <= 1.0
  assert results["likelihood"]["num_images"] == 4 and 0 < results["likelihood"]["bpd"] < 20
  report = open(os.path.join(wd, "report.md")).read()
  assert "bits/dim" in report
  assert "| ddim_5 | ddim | 5 | 5 |" in report and "samples/ddpm_10.png" in report


def test_cli_bad_mode(tmp_path):
  proc = run_python(["-m", "diffusion_jax.main", "--config=tests/tiny_config.py", f"--workdir={tmp_path}",
                     "--mode=fit"], check=False)
  assert proc.returncode != 0 and "valid modes: train, sample, eval, all" in proc.stderr
