"""Losing no work, failing early: the workdir lock (held, refused, stale ones taken over), sampler options and
sampling settings checked before anything compiles, and the command line's short error messages."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import run_python
from diffusion_jax import build, main, sample, workdir_lock
from diffusion_jax.config_files import parse_value
from diffusion_jax.samplers import parse_runs


def write_lock(workdir, age_s=0.0, **holder):
  path = os.path.join(workdir, workdir_lock.NAME)
  with open(path, "w") as f:
    json.dump(dict(dict(host=socket.gethostname(), pid=os.getpid(), started="2026-01-01T00:00:00", mode="train"),
                   **holder), f)
  os.utime(path, (time.time() - age_s, time.time() - age_s))
  return path


def dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", ""])
  proc.wait()
  return proc.pid


def test_a_lock_is_written_released_and_a_live_holder_refused(tmp_path):
  with workdir_lock.hold(str(tmp_path), stale_s=3600, mode="train"):
    holder = json.load(open(tmp_path / "run.lock"))
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["mode"] == "train"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    os.makedirs(tmp_path / "x")
    try:  # another live process's lock, as a second run sees this one's
      write_lock(str(tmp_path / "x"), pid=other.pid)
      with pytest.raises(workdir_lock.WorkdirLocked, match=rf"is in use by pid {other.pid} on .*mode train"):
        workdir_lock.acquire(str(tmp_path / "x"), stale_s=3600)
    finally:
      other.kill()
  assert not os.path.exists(tmp_path / "run.lock")


@pytest.mark.parametrize("holder, age_s, taken", [
    (dict(pid=None), 0.0, True),                     # its process is gone (pid filled in below)
    (dict(host="elsewhere", pid=1), 0.0, False),     # another host, heartbeat fresh: may be alive
    (dict(host="elsewhere", pid=1), 7200.0, True),   # another host, no heartbeat for longer than lock_stale_s
    (dict(), 0.0, True),                             # this pid: left by an earlier process (a restarted container)
])
def test_stale_locks_are_taken_over_with_a_warning(tmp_path, caplog, holder, age_s, taken):
  if holder.get("pid", 0) is None:
    holder["pid"] = dead_pid()
  write_lock(str(tmp_path), age_s, **holder)
  if not taken:
    with pytest.raises(workdir_lock.WorkdirLocked, match="is in use by pid 1 on elsewhere"):
      workdir_lock.acquire(str(tmp_path), stale_s=3600)
    return
  with caplog.at_level("WARNING"):
    mine = workdir_lock.acquire(str(tmp_path), stale_s=3600)
  assert json.load(open(tmp_path / "run.lock")) == mine and "Took over the stale lock" in caplog.text


def test_unknown_and_mistyped_sampler_options_list_the_valid_ones():
  with pytest.raises(ValueError, match=r"Sampler 'ddim' has no option 'foo' .*valid options: .*eta=0\.0.*w=0\.0"):
    parse_runs("ddim:50:foo=1")
  with pytest.raises(ValueError, match=r"Option eta=abc of sampler run 'ddim:50:eta=abc': 'abc' is not a number"):
    parse_runs("ddim:50:eta=abc")
  with pytest.raises(ValueError, match="n_corrector_steps=1.5 .*'1.5' is not an integer"):
    parse_runs("pc:10:n_corrector_steps=1.5")
  with pytest.raises(ValueError, match="denoise=yes .*'yes' is not true or false"):
    parse_runs("ode:10:denoise=yes")
  # values take the type of the option's default; an int literal stays as written (the run's label: ddim_50_eta1)
  assert parse_runs("ddim:50:eta=1:w=2.5,ode:5:eps=1e-3:solver=heun") == [
      ("ddim", 50, {"eta": 1, "w": 2.5}), ("ode", 5, {"eps": 1e-3, "solver": "heun"})]


def test_config_values_parse_as_their_fields_type():
  assert parse_value("0.5", 1.0) == 0.5 and parse_value("true", False) is True and parse_value("7", 3) == 7
  assert parse_value("16,32", (8,)) == (16, 32) and parse_value("heun", "dopri5") == "heun"
  assert parse_value("3", None) == 3 and parse_value("x", None) == "x" and parse_value("False", None) is False
  with pytest.raises(ValueError, match="'2.5' is not an integer"):
    parse_value("2.5", 3)


@pytest.mark.parametrize("overrides, message", [
    ({"sample.prompt": "a seven"}, "sample.prompt='a seven' needs a text-conditioned model .* class-conditional"),
    ({"model.num_classes": 0, "sample.classes": "3"}, "sample.classes='3' needs class labels"),
    ({"sample.runs": "ddim:5:eta=-1"}, "DDIM eta must be >= 0"),
    ({"sample.runs": "ode:5:solver=rk4"}, "Unknown ODE solver 'rk4'; valid solvers: dopri5, euler, heun"),
    ({"sample.runs": "ddim:2000"}, r"num_steps must be in \[1, 1000\]"),
    ({"model.num_classes": 0, "sample.runs": "ddim:5:w=1"}, "Classifier-free guidance .* needs a class- or text"),
])
def test_sampling_settings_are_checked_before_anything_trains(tiny, tmp_path, overrides, message):
  config = tiny(**overrides)
  with pytest.raises(ValueError, match=message):
    sample.check_sampling(config, build.setup(config)[1])
  with pytest.raises(ValueError, match=message):  # --mode=all refuses before training
    main.run(config, str(tmp_path), "all")
  assert not os.path.exists(tmp_path / "checkpoints")


def test_the_command_line_prints_one_message_and_the_trace_on_request(tmp_path):
  args = ["-m", "diffusion_jax.main", "--config=tests/tiny_config.py", f"--workdir={tmp_path}", "--mode=sample"]
  short = run_python(args, check=False)
  assert short.returncode == 1 and "Traceback" not in short.stderr
  assert f"Error: No checkpoint found in {tmp_path}/checkpoints; train first with --mode=train" in short.stderr
  full = run_python(args, env_extra={"DIFFUSION_JAX_TRACEBACK": "1"}, check=False)
  assert full.returncode == 1 and "Traceback" in full.stderr and "FileNotFoundError: No checkpoint" in full.stderr
