"""The ablation runner: sweep expansion and checks before any run, skip-if-done, failed runs recorded, mean ± std
aggregation of known numbers, and one real run of its command line."""
import json
import os

import numpy as np
import pytest

from conftest import ROOT
from experiments import ablate

CONFIG = "tests/tiny_config.py"


@pytest.fixture(autouse=True)
def repo_root(monkeypatch):
  monkeypatch.chdir(ROOT)


def test_sweep_expansion_product_joint_axes_and_seeds(tmp_path):
  runs = ablate.plan(CONFIG, ["training.weighting=uniform,p2", "training.p2_gamma=0.5,1.0"], ["training.num_steps=3"],
                     2, str(tmp_path))
  assert len(runs) == 8 and len({r["name"] for r in runs}) == 8
  assert runs[0]["combo"] == {"training.weighting": "uniform", "training.p2_gamma": "0.5"} and runs[1]["seed"] == 1
  assert "--config.training.num_steps=3" in runs[0]["args"] and "--config.seed=1" in runs[1]["args"]
  joint = ablate.plan(CONFIG, ["training.weighting+training.p2_gamma=uniform+1.0,p2+0.5,min_snr+1.0"], [], 1,
                      str(tmp_path))
  assert [r["combo"] for r in joint] == [{"training.weighting": w, "training.p2_gamma": g}
                                         for w, g in [("uniform", "1.0"), ("p2", "0.5"), ("min_snr", "1.0")]]
  tuples = ablate.plan(CONFIG, ["model.block_out_channels=(16,32),(8,16)"], [], 1, str(tmp_path))
  assert [r["combo"]["model.block_out_channels"] for r in tuples] == ["(16,32)", "(8,16)"]
  assert not os.listdir(tmp_path)  # planning writes nothing


def test_bad_sweeps_fail_before_any_run(tmp_path):
  out = str(tmp_path / "out")
  with pytest.raises(KeyError, match="no key 'training.weightng'; valid keys under training: .*weighting"):
    ablate.plan(CONFIG, ["training.weighting=uniform", "training.weightng=p2"], [], 1, out)
  with pytest.raises(ValueError, match="training.p2_gamma='high': 'high' is not a number"):
    ablate.plan(CONFIG, ["training.p2_gamma=0.5,high"], [], 1, out)
  with pytest.raises(ValueError, match="valid weightings: edm, likelihood, min_snr, p2, sigmoid, uniform"):
    ablate.plan(CONFIG, ["training.weighting=uniform,p3"], [], 1, out)
  with pytest.raises(ValueError, match="2 parts joined by"):
    ablate.plan(CONFIG, ["training.weighting+training.p2_gamma=uniform"], [], 1, out)
  assert not os.path.exists(out)


def fake_runner(fids, fail):
  """Stands in for a main.py run: writes results.json / training_log.json with known metrics, or fails."""
  calls = []

  def run(args, log_path):
    workdir = next(a.split("=", 1)[1] for a in args if a.startswith("--workdir="))
    name = os.path.basename(workdir)
    calls.append(name)
    if name in fail:
      return 1
    rows = [{"run": "real held-out images", "fid_digits": 9.0},
            {"run": "ddim_5", "sampler": "ddim", "fid_digits": fids[name], "is_digits": 2 * fids[name],
             "is_digits_std": 0.1, "class_accuracy": 0.5, "seconds": 1.5}]
    json.dump({"rows": rows}, open(os.path.join(workdir, "results.json"), "w"))
    json.dump({"log_snr_edges": [-10.0, 0.0, 10.0], "records": [
        {"step": 6, "seconds": 4.0, "loss": fids[name] / 10, "eps_mse": 0.2, "loss_by_log_snr": [0.9, 0.1]}]},
        open(os.path.join(workdir, "training_log.json"), "w"))
    return 0
  return run, calls


def test_skip_if_done_failed_runs_and_mean_std_of_known_numbers(tmp_path):
  out = str(tmp_path)
  runs = ablate.plan(CONFIG, ["training.weighting=uniform,p2"], [], 3, out)
  names = [r["name"] for r in runs]
  fids = dict(zip(names, [1.0, 2.0, 3.0, 10.0, 20.0, 0.0]))
  runner, calls = fake_runner(fids, fail={names[5]})
  status = ablate.execute(runs, out, runner=runner)
  assert calls == names and status[names[5]] == "failed" and status[names[0]] == "done"
  assert len(open(os.path.join(out, "commands.sh")).read().strip().splitlines()) == 1 + 6
  rows = ablate.write_results(runs, out, status)
  uniform, p2 = rows
  assert uniform["seeds"] == 3 and uniform["failed"] == 0 and p2["seeds"] == 2 and p2["failed"] == 1
  assert uniform["ddim_5/fid_digits_mean"] == pytest.approx(2.0)
  assert uniform["ddim_5/fid_digits_std"] == pytest.approx(1.0)  # sample std of 1, 2, 3
  assert (p2["ddim_5/fid_digits_mean"] == pytest.approx(15.0)
          and p2["ddim_5/fid_digits_std"] == pytest.approx(np.sqrt(50)))
  assert uniform["loss_mean"] == pytest.approx(0.2) and uniform["train_seconds_mean"] == pytest.approx(4.0)
  md = open(os.path.join(out, "results.md")).read()
  assert "| p2 | 2 | 1 |" in md and "15 ± 7.1" in md
  assert "failed" in open(os.path.join(out, "runs.csv")).read()
  assert os.path.getsize(os.path.join(out, "ddim_5_fid_digits.png")) > 1000
  assert os.path.getsize(os.path.join(out, "loss_by_log_snr.png")) > 1000
  runner, calls = fake_runner(fids, fail=set())  # resumed: only the failed run runs again
  status = ablate.execute(runs, out, runner=runner)
  assert calls == [names[5]] and status[names[0]] == "skipped" and status[names[5]] == "done"
