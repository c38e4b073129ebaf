"""Kernel sets: the implementations of the layers' hot operations (convolution, bias, upsampling + convolution,
GroupNorm, attention), chosen by name with config.model.kernels, as maxdiffusion chooses its attention kernel:

  xla      the stock path (xla.py): XLA's convolutions, GroupNorm differentiated by JAX, jax.nn.dot_product_attention;
  cpu      kernels written for XLA's CPU backend (cpu.py);
  blocked  xla with blocked_attention in accelerator-sized tiles: memory-light attention for long sequences;
  auto     cpu on a CPU backend, xla elsewhere (the default).

A kernel set changes how a layer computes, never its parameters: a checkpoint trained under one set restores and
samples under any other. Add one with KERNELS.register(name)(KernelSet(...))."""
import dataclasses
from typing import Callable

import jax

from diffusion_jax.models.kernels import blocked_attention, cpu, xla
from diffusion_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class KernelSet:
  """The operations a kernel set provides; each equals xla's to float32 rounding.

  conv(x, kernel, strides, padding): NHWC convolution in x's dtype, padding a string or [(lo, hi), ...];
  add_bias(y, bias): y + bias over the last axis in y's dtype;
  upsample_conv(x, kernel): 3x3 convolution (padding 1) of x upsampled 2x by its nearest neighbours;
  group_norm(x, scale, bias, groups, eps, silu): GroupNorm with float32 statistics (then SiLU when silu);
  attention(q, k, v): softmax(q k^T / sqrt(d)) v per head for q [B, Nq, H, D], k, v [B, Nk, H, D];
  rolled_backward: whether a loop of backward passes (gradient accumulation) runs as a rolled lax.scan, or unrolled
  where a rolled backward pass is slow (the CPU)."""
  conv: Callable
  add_bias: Callable
  upsample_conv: Callable
  group_norm: Callable
  attention: Callable
  rolled_backward: bool = True


KERNELS = Registry("kernel set")
KERNELS.register("xla")(KernelSet(xla.conv, xla.add_bias, xla.upsample_conv, xla.group_norm, xla.attention))
KERNELS.register("cpu")(KernelSet(cpu.conv, cpu.add_bias, cpu.upsample_conv, cpu.group_norm, cpu.attention,
                                  rolled_backward=False))
KERNELS.register("blocked")(KernelSet(xla.conv, xla.add_bias, xla.upsample_conv, xla.group_norm,
                                      blocked_attention.attention))


def resolve(name):
  """The registered name `name` stands for: auto -> cpu on a CPU backend, xla elsewhere."""
  if name == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "xla"
  if name not in KERNELS.names():
    raise ValueError(f"Unknown kernel set {name!r} (config.model.kernels); valid: auto, {', '.join(KERNELS.names())}")
  return name


def get_kernels(name):
  """The KernelSet named `name` (auto, or a registered name)."""
  return KERNELS.get(resolve(name))
