"""Starts N local processes of one job on JAX's distributed runtime over CPU collectives (gloo) on 127.0.0.1, for
development and tests:

  python -m diffusion_jax.launch --num_processes=2 [--devices_per_process=2] [--timeout=600]
      -- -m diffusion_jax.main ...

Everything after `--` is the Python command line of each process. If one process fails, the others are stopped and
the launcher exits with its code; a job that runs past --timeout is stopped too, so nothing hangs. SIGTERM and SIGINT
sent to the launcher go to every process: a training job then saves a checkpoint and each process exits with
preemption.EXIT_CODE, which the launcher returns."""
import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from diffusion_jax.preemption import EXIT_CODE, SIGNALS
from diffusion_jax.xla_flags import DEVICES_FLAG


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(python_args, num_processes, devices_per_process=1, timeout=600, env=None, forward_signals=False):
  """Runs the processes to the end; returns (exit code, [each process's output]). A process that stopped on request
  (preemption.EXIT_CODE) is not a failure: the others finish their step and save too. With forward_signals (main
  thread only), SIGTERM / SIGINT received here are sent on to every process."""
  if num_processes < 1 or devices_per_process < 1:
    raise ValueError(f"num_processes and devices_per_process must be >= 1; got {num_processes}, {devices_per_process}")
  address = f"127.0.0.1:{free_port()}"
  procs, logs = [], [tempfile.TemporaryFile("w+") for _ in range(num_processes)]  # files: a full pipe would block
  for i in range(num_processes):
    e = dict(env or os.environ, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(num_processes),
             JAX_PROCESS_ID=str(i), JAX_PLATFORMS="cpu")
    e["XLA_FLAGS"] = " ".join([f for f in e.get("XLA_FLAGS", "").split() if not f.startswith(DEVICES_FLAG)] +
                              [f"{DEVICES_FLAG}={devices_per_process}"])
    # a terminal's Ctrl-C reaches them once, from here
    procs.append(subprocess.Popen([sys.executable, *python_args], env=e, stdout=logs[i], stderr=subprocess.STDOUT,
                                  start_new_session=forward_signals))
  if forward_signals:
    for s in SIGNALS:
      signal.signal(s, lambda signum, frame: [p.send_signal(signum) for p in procs if p.poll() is None])
  deadline, code = time.time() + timeout, 0
  while None in [p.poll() for p in procs]:  # poll every process: a list, not a short-circuiting any()
    failed = [p.returncode for p in procs if p.returncode not in (None, 0, EXIT_CODE)]
    if failed or time.time() > deadline:
      code = failed[0] if failed else 124
      for p in procs:
        if p.poll() is None:
          p.kill()
      break
    time.sleep(0.2)
  outputs = []
  for p, log in zip(procs, logs):
    p.wait()
    log.seek(0)
    outputs.append(log.read())
    log.close()
  return code or next((p.returncode for p in procs if p.returncode), 0), outputs


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1)
  parser.add_argument("--timeout", type=float, default=600.0, help="seconds before every process is stopped")
  argv = sys.argv[1:]
  if "--" not in argv:
    parser.error("put the command of each process after --, e.g. -- -m diffusion_jax.main --config=...")
  split = argv.index("--")
  args = parser.parse_args(argv[:split])
  code, outputs = launch(argv[split + 1:], args.num_processes, args.devices_per_process, args.timeout,
                         forward_signals=True)
  for i, out in enumerate(outputs):
    print(f"===== process {i} =====\n{out}", flush=True)
  if code == 124:
    print(f"launch: stopped after {args.timeout:.0f} s", file=sys.stderr)
  sys.exit(code)


if __name__ == "__main__":
  main()
