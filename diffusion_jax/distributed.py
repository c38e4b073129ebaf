"""Joins JAX's distributed runtime when this process is one of several (set by diffusion_jax.launch, or the standard
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables); a single process runs unchanged. Must run
before JAX creates its backends."""
import os
import socket
import time

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize(timeout_s=None):
  """jax.distributed.initialize from the environment (CPU collectives over gloo); returns True when distributed.
  On TPU pods and SLURM, JAX_NUM_PROCESSES=auto lets JAX detect the cluster itself."""
  import jax
  if not os.environ.get("JAX_NUM_PROCESSES"):
    return False
  timeout_s = timeout_s or int(os.environ.get("JAX_INIT_TIMEOUT", "300"))
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if os.environ["JAX_NUM_PROCESSES"] == "auto":
    jax.distributed.initialize(initialization_timeout=timeout_s)
    return True
  missing = [v for v in ENV if not os.environ.get(v)]
  if missing:
    raise ValueError(f"A distributed run needs {', '.join(ENV)}; missing: {', '.join(missing)} (or set "
                     "JAX_NUM_PROCESSES=auto on a TPU pod or under SLURM)")
  address, process_id = os.environ["JAX_COORDINATOR_ADDRESS"], int(os.environ["JAX_PROCESS_ID"])
  if process_id:  # the runtime aborts the process on an unreachable coordinator; fail first, with a message
    wait_for_coordinator(address, timeout_s, process_id)
  jax.distributed.initialize(address, int(os.environ["JAX_NUM_PROCESSES"]), process_id,
                             initialization_timeout=timeout_s)
  return True


def wait_for_coordinator(address, timeout_s, process_id):
  """Returns once the coordinator's port (process 0 serves it) accepts connections; RuntimeError after timeout_s."""
  host, port = address.rsplit(":", 1)
  deadline = time.time() + timeout_s
  while True:
    try:
      socket.create_connection((host, int(port)), timeout=1.0).close()
      return
    except OSError as e:
      if time.time() > deadline:
        raise RuntimeError(f"Process {process_id} could not reach the coordinator at {address} within {timeout_s} s "
                           f"({e}); check that process 0 runs and that this address and port are reachable from "
                           "here, or raise JAX_INIT_TIMEOUT") from e
      time.sleep(0.2)
