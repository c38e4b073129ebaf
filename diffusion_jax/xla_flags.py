"""XLA CPU flags that make the U-Net faster on CPUs, set when the package is imported (diffusion_jax/__init__.py);
they must be in XLA_FLAGS before JAX creates its CPU backend (no-op if already set)."""
import os

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)  # YNNPACK fusions off: faster for small conv nets here
DEVICES_FLAG = "--xla_force_host_platform_device_count"


def cpu_cores():
  """The cores this process may run on (its affinity mask where the OS has one, e.g. not on macOS)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_cpu_flags(devices=None):
  """Adds CPU_FLAGS to XLA_FLAGS and, given `devices`, splits the CPU into that many JAX devices (one per core:
  cpu_cores()), over which the mesh splits each batch: data parallelism across cores, without the per-operation
  thread synchronisation that costs small networks much of their time. Flags already in XLA_FLAGS are kept."""
  flags = os.environ.get("XLA_FLAGS", "")
  for f in CPU_FLAGS + ((f"{DEVICES_FLAG}={devices}",) if devices else ()):
    if f.split("=")[0] not in flags:
      flags = f"{flags} {f}".strip()
  os.environ["XLA_FLAGS"] = flags
