"""Several real processes on JAX's distributed runtime (CPU collectives over gloo, 127.0.0.1) through
diffusion_jax.launch: a global batch assembled from per-process slices, a crashed process stopping the job, and an
unreachable coordinator named in the error. Every run has a timeout, so nothing hangs."""
import os
import time

from conftest import ROOT, run_python
from diffusion_jax.launch import launch

GLOBAL_SUM = """
import os, sys
from diffusion_jax import distributed
distributed.initialize()
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
if jax.process_index() == 1 and os.environ.get("CRASH"):
  os._exit(3)  # dies without a word, like a killed process; process 0 then waits in the collective
mesh = Mesh(np.array(jax.devices()), ("data",))
local = np.full((2, 3), 1.0 + jax.process_index(), np.float32)  # this process's slice of the global batch
x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
total = jax.jit(lambda a: a.sum(), out_shardings=NamedSharding(mesh, P()))(x)
print("RESULT", jax.process_index(), jax.process_count(), jax.device_count(), x.shape, float(total))
"""


def env(**extra):
  return dict(os.environ, PYTHONPATH=ROOT, **extra)


def test_two_processes_of_two_devices_share_one_global_batch():
  code, outputs = launch(["-c", GLOBAL_SUM], num_processes=2, devices_per_process=2, timeout=120, env=env())
  assert code == 0, outputs
  for i, out in enumerate(outputs):  # 4 devices in all; the sum covers both processes' slices: 6 * 1 + 6 * 2
    assert f"RESULT {i} 2 4 (4, 3) 18.0" in out, out


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
  assert "===== process 1 =====" in proc.stdout and "RESULT 1 2 2 (4, 3) 18.0" in proc.stdout
  assert run_python(["-m", "diffusion_jax.launch", "-c", "pass"], check=False).returncode == 2  # no --
