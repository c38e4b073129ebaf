import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, run_python
from diffusion_jax import build, checkpoint, evaluate, parallel, preemption, train


def params_of(state):
  return jax.tree.map(np.asarray, state.params)


@pytest.fixture
def uninterrupted(trained_tiny):
  """6 steps of the tiny config, in one go."""
  _, wd, state = trained_tiny
  return wd, state


def test_training_writes_checkpoints_and_logs(uninterrupted):
  wd, state = uninterrupted
  assert int(state.step) == 6
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["3", "6"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(wd, "logs")))
  ema, p = jax.tree.leaves(state.ema_params), jax.tree.leaves(state.params)
  assert any(not np.allclose(a, b) for a, b in zip(ema, p))
  log = json.load(open(os.path.join(wd, "training_log.json")))
  edges = np.array(log["log_snr_edges"])
  assert len(edges) == 9 and np.all(np.diff(edges) > 0) and edges[0] < -9 and edges[-1] > 9  # linear schedule
  assert [r["step"] for r in log["records"]] == [2, 4, 6]
  for r in log["records"]:  # eps target, uniform weighting: the objective is the eps loss itself
    assert r["loss"] == pytest.approx(r["eps_mse"], rel=1e-5) and len(r["loss_by_log_snr"]) == 8
    assert all(v is None or v > 0 for v in r["loss_by_log_snr"]) and any(v is not None for v in r["loss_by_log_snr"])


def test_loss_by_log_snr_bins():
  edges = np.array([-10.0, -5.0, 0.0, 5.0, 10.0])
  sums, counts = train.loss_by_bin(jnp.array([-12.0, -7.0, -6.0, 1.0, 11.0]), jnp.array([1.0, 2.0, 3.0, 4.0, 5.0]),
                                   edges)
  np.testing.assert_array_equal(counts, [3, 0, 1, 1])  # out-of-range values go to the end bins
  np.testing.assert_array_equal(sums, [6, 0, 4, 5])
  summary = train.summarize_bins(edges)({"loss": 4.0, "bin_sum": np.asarray(sums), "bin_count": np.asarray(counts)}, 2)
  assert summary == {"loss": 2.0, "loss_by_log_snr/[-10.0,-5.0)": 2.0, "loss_by_log_snr/[+0.0,+5.0)": 4.0,
                     "loss_by_log_snr/[+5.0,+10.0)": 5.0}


def test_resume_gives_same_parameters(uninterrupted, tiny, tmp_path):
  _, full = uninterrupted
  train.train(tiny(**{"training.num_steps": 3}), str(tmp_path))
  resumed = train.train(tiny(), str(tmp_path))
  assert int(resumed.step) == 6
  records = json.load(open(tmp_path / "training_log.json"))["records"]
  assert [r["step"] for r in records] == [2, 3, 4, 6] and records[0]["seconds"] <= records[-1]["seconds"]
  drift = json.load(open(tmp_path / "resume_log.json"))  # the longer run is recorded, and shown in report.md
  assert [(r["step"], r["changes"]) for r in drift] == [(3, {"training.num_steps": {"checkpoint": 3, "now": 6}})]
  assert "| 3 | training.num_steps | 3 | 6 |" in "\n".join(evaluate.resume_section(str(tmp_path)))
  for a, b in zip(jax.tree.leaves(params_of(full)), jax.tree.leaves(params_of(resumed))):
    np.testing.assert_array_equal(a, b)


def test_resuming_with_another_gradient_accumulation_and_remat_is_a_logged_change(uninterrupted, tiny, tmp_path):
  wd, _ = uninterrupted
  shutil.copytree(wd, tmp_path / "wd")
  state = train.train(tiny(**{"training.num_steps": 7, "training.grad_accum_steps": 4, "model.remat": "full"}),
                      str(tmp_path / "wd"))
  assert int(state.step) == 7
  changes = json.load(open(tmp_path / "wd" / "resume_log.json"))[-1]["changes"]
  assert changes["training.grad_accum_steps"] == {"checkpoint": 1, "now": 4}
  assert changes["model.remat"] == {"checkpoint": "none", "now": "full"}


def test_kill_9_then_resume_matches_uninterrupted(tiny, tmp_path):
  n = 40
  cfg = tiny(**{"training.num_steps": n, "training.checkpoint_every": 5})
  reference = train.train(tiny(**{"training.num_steps": n, "training.checkpoint_every": n}), str(tmp_path / "ref"))
  wd = str(tmp_path / "killed")
  args = [sys.executable, "-m", "diffusion_jax.main", "--config=tests/tiny_config.py", f"--workdir={wd}",
          "--mode=train", f"--config.training.num_steps={n}", "--config.training.checkpoint_every=5"]
  proc = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt = os.path.join(wd, "checkpoints")
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    steps = [int(s) for s in os.listdir(ckpt) if s.isdigit()] if os.path.isdir(ckpt) else []
    if steps and max(steps) >= 10:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "training finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(int(s) for s in os.listdir(ckpt) if s.isdigit())
  assert 10 <= killed_at < n
  resumed = train.train(cfg, wd)
  assert int(resumed.step) == n
  for a, b in zip(jax.tree.leaves(params_of(reference)), jax.tree.leaves(params_of(resumed))):
    np.testing.assert_array_equal(a, b)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny, tmp_path):
  cfg = tiny(**{"optim.lr": 1e30, "optim.grad_clip": 0.0, "optim.warmup_steps": 0, "training.num_steps": 50,
                "training.checkpoint_every": 1})
  with pytest.raises(FloatingPointError, match="last good checkpoint"):
    train.train(cfg, str(tmp_path))
  mngr = checkpoint.manager(str(tmp_path / "checkpoints"))
  step = mngr.latest_step()
  assert step is not None and step < 50
  params = build.load_params(cfg, str(tmp_path), parallel.make_mesh())
  assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(params))


def test_model_mismatch_names_the_field(uninterrupted, tiny, tmp_path):
  wd, _ = uninterrupted
  shutil.copytree(wd, tmp_path / "wd")
  with pytest.raises(ValueError, match=r"model.block_out_channels: checkpoint has \[16, 32\], config has \[16, 48\]"):
    train.train(tiny(**{"model.block_out_channels": (16, 48), "training.num_steps": 8}), str(tmp_path / "wd"))


def damage(step_dir, how):
  """Damages a checkpoint step as a preemption mid-upload, a full disk or an interrupted copy would."""
  state = os.path.join(step_dir, "state")
  files = [os.path.join(r, f) for r, _, fs in os.walk(state) for f in fs]
  largest = max(files, key=os.path.getsize)  # array data
  if how == "truncated":
    os.truncate(largest, os.path.getsize(largest) // 2)
  elif how == "part_deleted":
    shutil.rmtree(os.path.dirname(largest))
  elif how == "garbage_metadata":
    with open(os.path.join(state, "_METADATA"), "w") as f:
      f.write("garbage")
  elif how == "all_garbage":
    for f in files:
      with open(f, "wb") as fh:
        fh.write(b"garbage")


@pytest.mark.parametrize("how", ["truncated", "part_deleted", "garbage_metadata"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(uninterrupted, tiny, tmp_path, caplog, how):
  wd, full = uninterrupted
  shutil.copytree(wd, tmp_path / "wd")
  ckpt = tmp_path / "wd" / "checkpoints"
  damage(ckpt / "6", how)
  with caplog.at_level("WARNING"):
    resumed = train.train(tiny(), str(tmp_path / "wd"))
  damaged = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
  assert len(damaged) == 1 and "step 6" in damaged[0] and "resumed from step 3" in damaged[0], damaged
  assert "TensorStore" not in damaged[0] and len(damaged[0]) < 600
  assert sorted(os.listdir(ckpt)) == ["3", "6", "corrupt-6"]  # moved aside, never deleted; 6 trained again
  for a, b in zip(jax.tree.leaves(params_of(full)), jax.tree.leaves(params_of(resumed))):
    np.testing.assert_array_equal(a, b)


def test_the_command_line_says_one_line_per_damaged_step_and_logs_config_drift(uninterrupted, tmp_path):
  """Through main.py: no TensorStore spec, no asyncio tracebacks; a changed learning rate is logged and recorded."""
  wd, _ = uninterrupted
  shutil.copytree(wd, tmp_path / "wd")
  damage(tmp_path / "wd" / "checkpoints" / "6", "truncated")
  proc = run_python(["-m", "diffusion_jax.main", "--config=tests/tiny_config.py", f"--workdir={tmp_path / 'wd'}",
                     "--mode=train", "--config.optim.lr=0.002"])
  err = proc.stderr
  assert err.count("is damaged") == 1 and "Traceback" not in err and "TensorStore({" not in err, err[-3000:]
  assert "Event loop is closed" not in err and "never retrieved" not in err
  assert "Resuming step 3 with optim.lr changed: 0.001 -> 0.002" in err
  log = json.load(open(tmp_path / "wd" / "resume_log.json"))
  assert log[-1]["step"] == 3 and log[-1]["changes"]["optim.lr"] == {"checkpoint": 0.001, "now": 0.002}
  assert "training.batch_size" not in log[-1]["changes"]


def test_no_intact_checkpoint_names_every_step_and_moves_nothing(uninterrupted, tiny, tmp_path):
  wd, _ = uninterrupted
  with pytest.raises(FileNotFoundError, match="No checkpoint found"):
    build.load_params(tiny(), str(tmp_path / "empty"), parallel.make_mesh())
  shutil.copytree(wd, tmp_path / "wd")
  for step in ("3", "6"):
    damage(tmp_path / "wd" / "checkpoints" / step, "all_garbage")
  every_step = r"No intact checkpoint in .*\n  step 6: .*6: cannot .*\n  step 3: .*3: cannot "
  with pytest.raises(RuntimeError, match=every_step):
    build.load_params(tiny(), str(tmp_path / "wd"), parallel.make_mesh())
  assert sorted(os.listdir(tmp_path / "wd" / "checkpoints")) == ["3", "6"]


def test_another_optimizer_structure_is_a_config_error_not_damage(uninterrupted, tiny, tmp_path):
  wd, _ = uninterrupted
  shutil.copytree(wd, tmp_path / "wd")
  structure = "another train-state structure .*optim.grad_clip: checkpoint has 1.0, config has 0.0"
  with pytest.raises(ValueError, match=structure):
    train.train(tiny(**{"optim.grad_clip": 0.0, "training.num_steps": 9}), str(tmp_path / "wd"))
  assert sorted(os.listdir(tmp_path / "wd" / "checkpoints")) == ["3", "6"]  # nothing moved aside


def test_sigterm_saves_the_step_and_exits_75_and_a_second_run_is_refused(tiny, tmp_path):
  """A run stopped by SIGTERM checkpoints its current step and exits with preemption.EXIT_CODE; resumed, it gives
  the parameters of an uninterrupted run. While it runs, a second run on its workdir is refused, naming it."""
  wd = str(tmp_path / "run")
  args = [sys.executable, "-m", "diffusion_jax.main", "--config=tests/tiny_config.py", f"--workdir={wd}",
          "--mode=train", "--config.training.num_steps=100000", "--config.training.checkpoint_every=100000"]
  with open(tmp_path / "stderr.txt", "w") as err:
    proc = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL,
                            stderr=err)

  def wait_for(name):
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not os.path.exists(os.path.join(wd, name)):
      time.sleep(0.05)
    assert proc.poll() is None, open(tmp_path / "stderr.txt").read()[-3000:]
  wait_for("run.lock")  # taken before the run compiles: the second run starts while the first compiles
  second = run_python(["-m", "diffusion_jax.main", "--config=tests/tiny_config.py", f"--workdir={wd}", "--mode=train"],
                      check=False)
  assert second.returncode == 1 and f"is in use by pid {proc.pid} on " in second.stderr, second.stderr[-3000:]
  assert "Traceback" not in second.stderr  # one message, not the library's trace
  wait_for("training_log.json")  # training: stop it a few steps in
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == preemption.EXIT_CODE, open(tmp_path / "stderr.txt").read()[-3000:]
  saved = checkpoint.manager(os.path.join(wd, "checkpoints")).latest_step()
  assert saved is not None and 2 <= saved < 100000 and not os.path.exists(os.path.join(wd, "run.lock"))
  assert f"Stopped on request at step {saved} of 100000" in open(tmp_path / "stderr.txt").read()
  resumed = train.train(tiny(**{"training.num_steps": saved + 3}), wd)
  reference = train.train(tiny(**{"training.num_steps": saved + 3}), str(tmp_path / "reference"))
  for a, b in zip(jax.tree.leaves(params_of(reference)), jax.tree.leaves(params_of(resumed))):
    np.testing.assert_array_equal(a, b)


def test_unknown_config_key_is_rejected(tmp_path):
  proc = run_python(["-m", "diffusion_jax.main", "--config=tests/tiny_config.py", f"--workdir={tmp_path}",
                     "--config.training.num_stepz=3"], check=False)
  assert proc.returncode != 0 and "num_stepz" in proc.stderr


def test_unknown_names_list_valid_ones(tiny, tmp_path):
  with pytest.raises(ValueError, match="valid weightings: edm, likelihood, min_snr, p2, sigmoid, uniform"):
    train.train(tiny(**{"training.weighting": "p3"}), str(tmp_path))
  with pytest.raises(ValueError, match="valid optimizers: adam, adamw"):
    train.train(tiny(**{"optim.optimizer": "sgdd"}), str(tmp_path))
  with pytest.raises(ValueError, match="valid targets: eps, x0, v, velocity"):
    train.train(tiny(**{"diffusion.prediction": "score"}), str(tmp_path))
  with pytest.raises(ValueError, match="valid: importance, logit_normal, lognormal_sigma, mode, uniform"):
    train.train(tiny(**{"training.t_sampling": "stratified"}), str(tmp_path))


def test_cosine_decay_of_the_learning_rate(tiny):
  """Adam's step on a constant gradient is the learning rate itself: warmup to lr, then lr (1 + cos(pi s)) / 2 with s
  the fraction of the decay done, 0 at decay_steps; decay_steps=0 keeps lr after the warmup."""
  def rates(**optim):
    tx = build.make_optimizer(tiny(**{f"optim.{k}": v for k, v in optim.items()}).optim)
    params, out = jnp.zeros(()), []
    state = tx.init(params)
    for _ in range(12):
      update, state = tx.update(jnp.float32(1e-3), state, params)  # below the clip norm
      out.append(-float(update))
    return np.array(out)
  s = np.clip((np.arange(12) - 2) / 8, 0, 1)
  expected = np.where(np.arange(12) < 2, np.arange(12) / 2 * 0.1, 0.1 * (1 + np.cos(np.pi * s)) / 2)
  np.testing.assert_allclose(rates(lr=0.1, warmup_steps=2, decay_steps=10), expected, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(rates(lr=0.1, warmup_steps=2, decay_steps=0), np.minimum(np.arange(12) / 2, 1) * 0.1,
                             rtol=1e-4)
  with pytest.raises(ValueError, match=r"optim.decay_steps=2 must exceed optim.warmup_steps=2"):
    build.make_optimizer(tiny(**{"optim.warmup_steps": 2, "optim.decay_steps": 2}).optim)
