"""Several real processes on JAX's distributed runtime (CPU collectives over gloo, 127.0.0.1) through
diffusion_jax.launch: a global batch assembled from per-process slices, a crashed process stopping the job, an
unreachable coordinator named in the error; main.py training, resuming and sampling give the same numbers on 1 x 1,
1 x 4 and 2 x 2 (processes x devices), with fsdp 1 or 2. Every run has a timeout, so nothing hangs."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, run_python, tiny_config
from diffusion_jax.launch import launch

GLOBAL_SUM = """
import os, sys
from diffusion_jax import distributed
distributed.initialize()
import jax, numpy as np
from diffusion_jax import parallel
if jax.process_index() == 1 and os.environ.get("CRASH"):
  os._exit(3)  # dies without a word, like a killed process; process 0 then waits in the collective
mesh = parallel.make_mesh()
rows = parallel.local_rows(4, mesh)  # this process's rows of a global batch of 4
x = parallel.shard_local_batch(np.full((rows.stop - rows.start, 3), 1.0 + jax.process_index(), np.float32), mesh, 4)
total = jax.jit(lambda a: a.sum(), out_shardings=parallel.replicated(mesh))(x)
gathered = parallel.to_host(parallel.shard_batch(np.arange(4 * 3.0).reshape(4, 3), mesh))
assert np.array_equal(gathered, np.arange(4 * 3.0).reshape(4, 3)), gathered
for bad in (lambda: parallel.make_mesh(fsdp=3), lambda: parallel.check_batch(6, parallel.make_mesh(fsdp=2))):
  try:
    bad()
  except ValueError as e:
    print("ERROR", e)
print("RESULT", jax.process_index(), jax.process_count(), jax.device_count(), x.shape, rows, float(total))
"""


def env(**extra):
  return {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]), **extra}


def test_two_processes_of_two_devices_share_one_global_batch():
  code, outputs = launch(["-c", GLOBAL_SUM], num_processes=2, devices_per_process=2, timeout=120, env=env())
  assert code == 0, outputs
  for i, out in enumerate(outputs):  # 4 devices in all; the sum covers both processes' slices: 6 * 1 + 6 * 2
    assert f"RESULT {i} 2 4 (4, 3) slice({2 * i}, {2 * i + 2}, None) 18.0" in out, out
  assert "ERROR parallel.fsdp=3 does not divide the 4 devices (2 process(es)); valid: 1, 2, 4" in outputs[0]
  assert ("ERROR The global batch size 6 is not divisible by the 4 devices of the mesh (data=2 x fsdp=2, 2 "
          "process(es)); use a multiple of 4") in outputs[0]


def test_a_crashed_process_stops_the_others():
  start = time.time()
  code, outputs = launch(["-c", GLOBAL_SUM], num_processes=2, devices_per_process=1, timeout=120, env=env(CRASH="1"))
  assert code != 0 and time.time() - start < 60 and "RESULT" not in outputs[0]  # 3, or process 0 aborted


def test_an_unreachable_coordinator_is_named():
  proc = run_python(["-c", GLOBAL_SUM], env_extra=dict(JAX_COORDINATOR_ADDRESS="127.0.0.1:1", JAX_NUM_PROCESSES="2",
                                                       JAX_PROCESS_ID="1", JAX_INIT_TIMEOUT="2"), check=False)
  assert proc.returncode != 0
  assert "Process 1 could not reach the coordinator at 127.0.0.1:1 within 2 s" in proc.stderr


def test_launcher_command_line():
  proc = run_python(["-m", "diffusion_jax.launch", "--num_processes=2", "--timeout=120", "--", "-c", GLOBAL_SUM])
  assert "===== process 1 =====" in proc.stdout and "RESULT 1 2 2 (4, 3) slice(2, 4, None) 18.0" in proc.stdout
  assert run_python(["-m", "diffusion_jax.launch", "-c", "pass"], check=False).returncode == 2  # no --


LANES = """
import sys
from diffusion_jax import distributed
distributed.initialize()
import jax, numpy as np
from conftest import tiny_config
from diffusion_jax import parallel, train
from diffusion_jax.data import get_dataset
from tiny_tfds import example_ids
config = tiny_config(**{"data.name": "tfds", "data.tfds_name": "tiny_images", "data.data_dir": sys.argv[1],
                        "data.lanes": 4, "training.batch_size": 8})
mesh = parallel.make_mesh()
rows = parallel.local_rows(8, mesh)
data = get_dataset(config, "train", rows)  # as train.train loads it: only this process's lanes
for step in range(6):
  batch = parallel.shard_local_batch(train.host_batch(config, data, step, rows), mesh, 8)
  print("BATCH", step, example_ids(parallel.to_host(batch["image"])).tolist())
print("LOADED", jax.process_index(), sorted(example_ids(data.images).tolist()))
"""


def test_tfds_processes_read_only_their_lanes(tiny_tfds_dir):
  """2 processes x 2 devices: each loads half of a TFDS split (its 2 of 4 lanes); the global batches they assemble
  are those of one process reading it all."""
  from diffusion_jax import train
  from diffusion_jax.data import get_dataset
  from tiny_tfds import example_ids
  code, outputs = launch(["-c", LANES, tiny_tfds_dir], num_processes=2, devices_per_process=2, timeout=180, env=env())
  assert code == 0, outputs[0][-4000:]
  config = tiny_config(**{"data.name": "tfds", "data.tfds_name": "tiny_images", "data.data_dir": tiny_tfds_dir,
                          "data.lanes": 4, "training.batch_size": 8})
  full = get_dataset(config, "train")
  loaded = [set(json.loads(re.search(rf"LOADED {p} (\[.*\])", outputs[p]).group(1))) for p in (0, 1)]
  assert len(loaded[0]) == len(loaded[1]) == len(full) // 2 and not loaded[0] & loaded[1]
  for step in range(6):
    expected = example_ids(train.host_batch(config, full, step)["image"]).tolist()
    assert f"BATCH {step} {expected}" in outputs[0] and f"BATCH {step} {expected}" in outputs[1]


# --- main.py under several processes: the same training, checkpoints and samples whatever the topology -------------
# (the 1 process x 1 device runs happen in this pytest process; the others are real processes started by launch)

SMALL = {"model.block_out_channels": (32,), "model.attn_resolutions": (), "training.log_every": 1}  # quick to compile
MAIN = ["-m", "diffusion_jax.main", "--config=tests/tiny_config.py"] + [
    f"--config.{k}={v}".replace(" ", "") for k, v in SMALL.items()]


def small_config(**overrides):
  return tiny_config(**SMALL, **overrides)


def run_main(workdir, num_processes, devices_per_process, *flags):
  code, outputs = launch([*MAIN, f"--workdir={workdir}", *flags], num_processes, devices_per_process, timeout=300,
                         env=env())
  assert code == 0, outputs[0][-6000:]
  return outputs


def logged_losses(workdir):
  with open(os.path.join(workdir, "training_log.json")) as f:
    return [r["loss"] for r in json.load(f)["records"]]


def saved_params(workdir, step):
  """The parameters of a checkpoint step, restored onto this process's one device."""
  import jax
  from diffusion_jax import build, checkpoint
  cfg = small_config()
  model, _ = build.setup(cfg)
  abstract = jax.eval_shape(lambda: build.init_state(cfg, model, build.make_optimizer(cfg.optim),
                                                     jax.random.PRNGKey(0)))
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), abstract)
  state, _ = checkpoint.restore(checkpoint.manager(os.path.join(workdir, "checkpoints")), abstract, cfg, step)
  return jax.tree.leaves(state.params)


def assert_params_close(a, b):
  assert len(a) == len(b)
  diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))
  assert diff < 2e-5, diff


@pytest.fixture(scope="module")
def topologies(tmp_path_factory):
  """Workdirs of the small config trained by main.py: 3 steps on 1 process x 4 devices (fsdp 1) and on 2 processes
  x 2 devices with fsdp 2 and 2 accumulated microbatches per step, the latter resumed to step 6 in this single-device
  process, which also trains 6 steps from scratch."""
  from diffusion_jax import train
  base = tmp_path_factory.mktemp("topologies")
  wd = {k: str(base / k) for k in ("1x1", "1x4", "2x2", "2x2_then_1x1")}
  run_main(wd["1x4"], 1, 4, "--mode=train", "--config.training.num_steps=3")
  out = run_main(wd["2x2"], 2, 2, "--mode=train", "--config.training.num_steps=3", "--config.parallel.fsdp=2",
                 "--config.training.grad_accum_steps=2")
  shutil.copytree(wd["2x2"], wd["2x2_then_1x1"])
  train.train(small_config(), wd["2x2_then_1x1"])
  train.train(small_config(), wd["1x1"])
  return wd, out


def test_training_is_the_same_on_every_topology(topologies):
  wd, out = topologies
  full = logged_losses(wd["1x1"])
  assert len(full) == 6 and full[0] > full[-1]  # it trains
  np.testing.assert_allclose(logged_losses(wd["1x4"]), full[:3], rtol=1e-4)
  np.testing.assert_allclose(logged_losses(wd["2x2"]), full[:3], rtol=1e-4)
  reference = saved_params(wd["1x1"], 3)
  assert_params_close(saved_params(wd["1x4"], 3), reference)
  assert_params_close(saved_params(wd["2x2"], 3), reference)  # saved by 2 processes with fsdp 2, restored here
  # fsdp=2 splits the larger tensors: each device holds well under the whole train state
  total, per_device = map(float, re.search(r"Train state: ([\d.]+) MB, ([\d.]+) MB per device \(mesh data=2 x "
                                           r"fsdp=2, 2 process\(es\)\)", out[0]).groups())
  assert per_device < 0.7 * total
  assert "eps_mse=" in out[0] and "eps_mse=" not in out[1]  # metrics are logged by process 0 only


def test_a_checkpoint_of_two_processes_resumes_in_one(topologies):
  wd, _ = topologies
  resumed = logged_losses(wd["2x2_then_1x1"])
  assert len(resumed) == 6  # steps 1-3 from 2 processes, 4-6 from 1
  np.testing.assert_allclose(resumed, logged_losses(wd["1x1"]), rtol=1e-4)
  assert_params_close(saved_params(wd["2x2_then_1x1"], 6), saved_params(wd["1x1"], 6))


def test_sampling_and_evaluation_over_two_processes_equal_one(topologies):
  """main.py --mode=all over 2 processes x 2 devices on the finished 1 x 4 run (restored onto the new topology):
  its samples and FID-digits equal those of the same sampling and scoring in this single-device process."""
  from diffusion_jax import build, parallel, sample
  from diffusion_jax.evaluation.features import Scorer
  wd, _ = topologies
  run = {"training.num_steps": 3, "sample.runs": "ddim:5", "sample.num_samples": 64, "sample.batch_size": 64,
         "eval.cache_dir": os.path.join(wd["1x4"], "cache")}
  run_main(wd["1x4"], 2, 2, "--mode=all", *[f"--config.{k}={v}" for k, v in run.items()])
  two = np.load(os.path.join(wd["1x4"], "samples", "ddim_5.npz"))["images"]
  with open(os.path.join(wd["1x4"], "results.json")) as f:
    rows = {r["run"]: r for r in json.load(f)["rows"]}
  cfg = small_config(**run)
  mesh = parallel.mesh_for(cfg)
  model, process = build.setup(cfg)
  one, _, _, _ = sample.generate_samples(cfg, model, process, build.load_params(cfg, wd["1x4"], mesh), mesh, "ddim",
                                         5, 64, jax.random.PRNGKey(cfg.seed + 1))  # as sample.sample draws them
  assert two.shape == (64, 8, 8, 1) and np.std(two) > 0.1
  np.testing.assert_allclose(two, one, atol=1e-4)
  mine = Scorer(cfg, wd["1x4"], mesh)(one)  # the digits classifier and reference statistics the run cached
  assert rows["ddim_5"]["num_samples"] == 64
  assert rows["ddim_5"]["fid_digits"] == pytest.approx(mine["fid_digits"], abs=2e-3)


def test_sigterm_stops_every_process_after_one_step_and_saves_it(tmp_path):
  """SIGTERM to the launcher reaches both processes; they stop after the same step (their stop requests are reduced
  inside the train step), save it together and exit 75; resumed in one process, the run continues as one that was
  never stopped."""
  from diffusion_jax import checkpoint, preemption, train
  wd = str(tmp_path / "run")
  with open(tmp_path / "out.txt", "w") as out:
    proc = subprocess.Popen([sys.executable, "-m", "diffusion_jax.launch", "--num_processes=2", "--timeout=600", "--",
                             *MAIN, f"--workdir={wd}", "--mode=train", "--config.training.num_steps=100000",
                             "--config.training.checkpoint_every=100000"], cwd=ROOT, env=env(), stdout=out,
                            stderr=subprocess.STDOUT)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None and not os.path.exists(os.path.join(wd, "training_log.json")):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  code = proc.wait(timeout=200)
  out = open(tmp_path / "out.txt").read()
  assert code == preemption.EXIT_CODE, out[-6000:]
  stopped = {int(s) for s in re.findall(r"Stopped on request at step (\d+) of 100000", out)}
  saved = checkpoint.manager(os.path.join(wd, "checkpoints")).latest_step()
  assert len(re.findall(r"Stopped on request", out)) == 2 and stopped == {saved}, out[-6000:]
  assert not os.path.exists(os.path.join(wd, "run.lock"))  # the job's one lock, released by process 0
  resumed = train.train(small_config(**{"training.num_steps": saved + 2}), wd)
  reference = train.train(small_config(**{"training.num_steps": saved + 2}), str(tmp_path / "reference"))
  assert_params_close(jax.tree.leaves(resumed.params), jax.tree.leaves(reference.params))
