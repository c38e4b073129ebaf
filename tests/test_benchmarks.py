"""benchmarks/accelerator.py: its smoke run on this CPU, and its peak table; benchmarks/memory.py's budget bisection."""
import json
import os

import pytest

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


def test_memory_budget_bisection_and_the_step_analysis_under_remat(monkeypatch):
  # the bisection on a synthetic cost (1 MiB per example + 10 MiB): exact answers, multiples of k, and batch 1's need
  # when nothing fits; then XLA's analysis of a tiny config's real step
  from benchmarks import memory
  from conftest import tiny_config
  monkeypatch.setattr(memory, "step_memory", lambda config, b: {"total": (10 + b) * 2**20})
  assert memory.largest_batch(tiny_config(), 100 * 2**20)[0] == 90
  assert memory.largest_batch(tiny_config(**{"training.grad_accum_steps": 4}), 100 * 2**20)[0] == 88
  with pytest.raises(ValueError, match="Even a per-device batch of 1 .* needs 0.01 GiB, more than the budget"):
    memory.largest_batch(tiny_config(), 5 * 2**20)
  monkeypatch.undo()
  small = {"model.block_out_channels": (8, 16), "model.attn_resolutions": ()}
  mem = memory.step_memory(tiny_config(**small), 4, kernels="cpu")
  assert set(mem) == {"argument", "output", "temp", "alias", "total"} and mem["temp"] > 0
  assert mem["total"] == mem["argument"] + mem["output"] + mem["temp"] - mem["alias"] > mem["argument"]
  # remat's recomputation survives XLA's CPU pipeline (models/remat.compiler_options): fewer activations are held
  full = memory.step_memory(tiny_config(**small, **{"model.remat": "full"}), 4, kernels="cpu")
  assert full["argument"] == mem["argument"] and full["temp"] < 0.8 * mem["temp"]


def test_memory_settings_run_in_a_fresh_process():
  from benchmarks import memory
  x, t = memory.in_fresh_process(memory.inputs, 4)  # the benchmark's inputs, made in a spawned interpreter
  assert (x == memory.inputs(4)[0]).all()
  assert t.shape == (4,) and memory.in_fresh_process(os.getpid) != os.getpid()
