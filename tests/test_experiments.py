"""experiments/ scripts end to end on a tiny trained model."""
import json
import os

import pytest

from diffusion_jax import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  from conftest import tiny_config
  wd = str(tmp_path_factory.mktemp("trained"))
  config = tiny_config(**{"training.num_steps": 2})
  train.train(config, wd)
  return config, wd


def test_compare_samplers_grid_tables_plot_and_resume(trained, monkeypatch):
  from experiments import compare_samplers as cs
  config, wd = trained
  out = os.path.join(wd, "cmp")
  rows = cs.compare(config, wd, out, ["edm", "ode_heun"], [5], ["1e-2"], 20)
  by_run = {r["run"]: r for r in rows}
  # edm: 2 S - 1 NFE with S = (n + 1) // 2; heun: 2 S + 1 with S = (n - 1) // 2; plus one RK45 run
  assert {r: (by_run[r]["nfe"], by_run[r]["target_nfe"]) for r in ("edm_3", "ode_2_solverheun")} \
      == {"edm_3": (5, 5), "ode_2_solverheun": (5, 5)}
  assert "ode_20_atol0.01_rtol0.01" in by_run and len(rows) == 3
  assert all(r["fid_digits"] > 0 and r["seconds"] > 0 for r in rows)
  md = open(os.path.join(out, "results.md")).read()
  assert "| sampler | 5 |" in md and "| ode solver=heun |" in md
  assert os.path.getsize(os.path.join(out, "fid_vs_nfe.png")) > 1000
  assert open(os.path.join(out, "results.csv")).readline().startswith("run,sampler,steps,target_nfe,nfe,fid_digits")
  # resumable: finished runs are skipped, only new ones are sampled
  calls = []
  real = cs.generate_samples
  monkeypatch.setattr(cs, "generate_samples", lambda *a, **k: calls.append(a[5:7]) or real(*a, **k))
  rows = cs.compare(config, wd, out, ["edm", "ddim"], [5], [], 20)
  assert calls == [("ddim", 5)] and len(rows) == 4  # edm_3 was done
  assert json.load(open(os.path.join(out, "rows.json")))[-1]["run"] == "ddim_5"


def test_compare_samplers_bad_family(trained):
  from experiments import compare_samplers as cs
  config, wd = trained
  with pytest.raises(ValueError, match="valid: ddpm, ddim"):
    cs.compare(config, wd, os.path.join(wd, "bad"), ["dpm2"], [3], [], 20)
