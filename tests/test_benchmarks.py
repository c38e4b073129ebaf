"""benchmarks/accelerator.py: its smoke run on this CPU, and its peak table."""
import json

from conftest import run_python


def test_accelerator_benchmark_smoke_run_prints_its_tasks():
  # one kernel set keeps this short: the sets' equality is tests/test_kernel_parity.py's; the default models' DiTs
  # (DiT-B/2, DiT-XL/2) are one tiny DiT under --smoke
  out = run_python(["-m", "benchmarks.accelerator", "--smoke", "--dtypes=float32", "--kernels=xla"]).stdout
  lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
  header, rows = lines[0], lines[1:]
  assert header["benchmark"] == "accelerator" and header["backend"] == "cpu"
  assert header["models"] == ["unet", "dit_tiny"]
  assert [(r["model"], r["kernels"], r["task"]) for r in rows] == [
      ("unet", "xla", "train"), ("unet", "xla", "ddim_3"), ("dit_tiny", "xla", "train"), ("dit_tiny", "xla", "ddim_3")]
  for r in rows:
    assert r["images_per_s"] > 0 and r["flops"] > 0 and r["tflops_per_s"] > 0 and r["xla_mb"] > 0
    assert r["fraction_of_peak"] is None  # no peak is known for a CPU
  assert "| model | task | dtype | kernels |" in out


def test_peak_table_matches_device_kinds_and_dtypes():
  from benchmarks.accelerator import peak_tflops
  assert peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4
  assert peak_tflops("NVIDIA H100 PCIe", "float32") == 378.0
  assert peak_tflops("TPU v5 lite", "float32") == 197.0
  assert peak_tflops("cpu", "float32") is None and peak_tflops("cpu", "float32", override=2.0) == 2.0
