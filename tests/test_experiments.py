"""experiments/ scripts end to end on a tiny trained model."""
import json
import os

import numpy as np
import pytest


@pytest.fixture
def trained(trained_tiny):
  config, wd, _ = trained_tiny
  return config, wd


def test_compare_samplers_grid_tables_plot_and_resume(trained, monkeypatch):
  from experiments import compare_samplers as cs
  from experiments import scoring
  config, wd = trained
  out = os.path.join(wd, "cmp")
  rows = cs.compare(config, wd, out, ["edm", "ode_heun"], [5], ["1e-2"], 20, seeds=2, seeded_nfe=5)
  by_run = {r["run"]: r for r in rows}
  # edm: 2 S - 1 NFE with S = (n + 1) // 2; heun: 2 S + 1 with S = (n - 1) // 2; plus one RK45 run; the two
  # fixed-step runs again under a second sampling seed, the adaptive one not
  assert {r: (by_run[r]["nfe"], by_run[r]["target_nfe"]) for r in ("edm_3", "ode_2_solverheun")} \
      == {"edm_3": (5, 5), "ode_2_solverheun": (5, 5)}
  assert "ode_20_atol0.01_rtol0.01" in by_run and len(rows) == 5
  assert by_run["edm_3_seed1"]["seed"] == 1 and by_run["edm_3_seed1"]["fid_digits"] != by_run["edm_3"]["fid_digits"]
  assert all(r["fid_digits"] > 0 and r["seconds"] > 0 for r in rows)
  md = open(os.path.join(out, "results.md")).read()
  assert "| sampler | 5 |" in md and "| ode solver=heun |" in md
  fids = [by_run[r]["fid_digits"] for r in ("edm_3", "edm_3_seed1")]
  assert f"| edm | {np.mean(fids):.3g} ± {np.std(fids, ddof=1):.2g} |" in md
  assert os.path.getsize(os.path.join(out, "fid_vs_nfe.png")) > 1000
  header = open(os.path.join(out, "results.csv")).readline()
  assert header.startswith("run,sampler,steps,target_nfe,nfe,seed,fid_digits")
  # resumable: finished runs are skipped, only new ones are sampled
  calls = []
  real = scoring.score_sampler_run
  monkeypatch.setattr(scoring, "score_sampler_run", lambda *a, **k: calls.append(a[6:8]) or real(*a, **k))
  rows = cs.compare(config, wd, out, ["edm", "ddim"], [5], [], 20)
  assert calls == [("ddim", 5)] and len(rows) == 6  # edm_3 was done
  assert json.load(open(os.path.join(out, "rows.json")))[-1]["run"] == "ddim_5"


def test_compare_samplers_on_the_mixture_oracle(tmp_path):
  # no model: the exact eps drives every sampler; the error against the exact mixture falls with NFE towards the
  # floor of exact samples, and a third-order solver beats DDIM at equal NFE on this smooth problem
  from configs.digits import get_config
  from experiments import compare_samplers as cs
  config = get_config()
  config.sample.spacing, config.sample.clip_x0 = "trailing", False
  rows, floor = cs.oracle(config, str(tmp_path), ["ddim", "unipc_bh1"], [5, 20], 2, 2000)
  mmd = {(r["sampler"], r["target_nfe"], r["seed"]): r["mmd2"] for r in rows}
  assert len(rows) == 8
  for name in ("ddim", "unipc"):
    assert mmd[name, 5, 0] > mmd[name, 20, 0] > floor["mmd2"]
  assert mmd["unipc", 20, 0] < mmd["ddim", 20, 0]
  md = open(tmp_path / "oracle.md").read()
  assert "| unipc order=3 variant=bh1 |" in md and " ± " in md
  assert os.path.getsize(tmp_path / "mmd_vs_nfe.png") > 1000


def test_compare_samplers_bad_family(trained):
  from experiments import compare_samplers as cs
  config, wd = trained
  with pytest.raises(ValueError, match="valid: ddpm, ddim"):
    cs.compare(config, wd, os.path.join(wd, "bad"), ["dpm2"], [3], [], 20)


def test_guidance_sweep_tables_plots_seeds_and_resume(trained, trained_classifier, monkeypatch):
  """Every method on one model: classifier-free (w), in an interval, rescaled, APG, autoguidance by the run's earlier
  checkpoint, and classifier guidance of the unconditional mode (w = -1, s); the unguided run once, starting every w
  curve; each method's best point again under a second seed; CSV, Markdown and both figures; finished runs skipped."""
  from experiments import guidance_sweep as gs
  from experiments import scoring
  config, wd = trained
  config = config.copy_and_resolve_references()
  config.classifier.workdir = trained_classifier[1]
  out = os.path.join(wd, "sweep")
  methods = ["cfg", "interval", "rescale", "apg", "autoguidance", "classifier"]
  run = lambda: gs.sweep(config, wd, out, methods, ["0", "1"], ["2"], "ddim:3", 2, guide=f"{wd}:3",
                         interval=(0.5, 5.0), seeds=2)
  rows = run()
  first = [r for r in rows if "seed" not in r]
  by = {(r["method"], r["w"], r["s"]): r for r in first}
  assert len(first) == len(by) == 7
  assert set(by) == {("unguided", 0.0, 0.0), ("classifier", -1.0, 2.0)} | {(m, 1.0, 0.0) for m in methods[:5]}
  assert by[("classifier", -1.0, 2.0)]["run"] == "ddim_3_s2.0_w-1.0"
  assert by[("interval", 1.0, 0.0)]["run"] == "ddim_3_interval0.5-5.0_w1.0"
  assert all(0.0 <= r["class_accuracy"] <= 1.0 and r["fid_digits"] > 0 and r["nfe"] == 3 for r in rows)
  best = gs.summary(rows, methods, gs.metric_names("digits"))
  assert [b["method"] for b in best] == methods and all(b["seeds"] == 2 for b in best)
  best_runs = {r["run"] for r in gs.best_points(rows, methods, "fid_digits").values()}
  assert {r["run"] for r in rows if r.get("seed") == 1} == {f"{run}_seed1" for run in best_runs}
  assert open(os.path.join(out, "results.csv")).readline().startswith("method,w,s,fid_digits,is_digits")
  assert "| classifier | -1.000 | 2.000 |" in open(os.path.join(out, "results.md")).read()
  assert "| autoguidance | w = " in open(os.path.join(out, "best.md")).read()
  assert all(os.path.getsize(os.path.join(out, f)) > 1000 for f in ("fid_vs_is.png", "fid_vs_accuracy.png"))
  calls = []
  real = scoring.score_sampler_run
  monkeypatch.setattr(scoring, "score_sampler_run", lambda *a, **k: calls.append(a[6:8]) or real(*a, **k))
  assert run() == rows and calls == []
  with pytest.raises(ValueError, match="valid: cfg, interval, rescale, apg, autoguidance, classifier, cond_classifier"):
    gs.plan(config, ["clf"], [], ["1"], "ddim:3")
  with pytest.raises(ValueError, match="must not set w or s"):
    gs.plan(config, ["cfg"], ["1"], [], "ddim:3:w=2")
  with pytest.raises(ValueError, match="needs its guiding model: --guide"):
    gs.plan(config, ["autoguidance"], ["1"], [], "ddim:3")
  uncond = config.copy_and_resolve_references()
  uncond.model.num_classes = 0
  planned = {extra["method"]: opts for _, _, _, opts, extra in gs.plan(uncond, ["autoguidance", "classifier"], ["1"],
                                                                          ["2"], "ddim:3", guide="runs/small")}
  assert planned == {"autoguidance": {"guide": "runs/small", "w": 1.0}, "classifier": {"s": 2.0}}
