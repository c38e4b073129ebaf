"""XLA CPU flags that make the U-Net faster on CPUs; must run before JAX is imported (no-op if already set)."""
import os

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)  # YNNPACK fusions off: faster for small conv nets here


def set_cpu_flags():
  flags = os.environ.get("XLA_FLAGS", "")
  for f in CPU_FLAGS:
    if f.split("=")[0] not in flags:
      flags = f"{flags} {f}".strip()
  os.environ["XLA_FLAGS"] = flags
