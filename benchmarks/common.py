"""What the benchmarks share without flags of their own: the reference U-Nets of diffusers against which ours is
measured (the same random weights converted), and timing with the process's peak resident memory."""
import ctypes
import time

import torch
from diffusers import UNet2DModel

from configs.base import get_base_config
from diffusion_jax import convert

# the U-Net of the issue (block_out_channels 64/128/128, attention at the middle level, 32x32 RGB) and the demo's;
# diffusers' default attention_head_dim=8 gives them 16 and 8 attention heads
UNETS = {
    "medium": dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 128, 128),
                   layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
    "digits": dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=2,
                   down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                   norm_num_groups=8),
}
COMMON = dict(norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0)


def peak_rss_reset():
  """Returns the allocator's free memory to the system (glibc's malloc_trim), so that memory freed earlier (a
  compilation, a weight conversion) and reused later counts as growth, then resets the peak resident set size
  (VmHWM) to the current one."""
  ctypes.CDLL("libc.so.6").malloc_trim(0)
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def rss_mb(field):
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def measure(fn, n):
  """Seconds per call of fn() over n calls, and the peak RSS growth in MiB over them. fn returns None, or the seconds
  it measured itself (then used instead of the wall clock)."""
  peak_rss_reset()
  base = rss_mb("VmRSS:")
  start = time.perf_counter()
  own = [fn() for _ in range(n)]
  seconds = sum(own) if None not in own else time.perf_counter() - start
  return seconds / n, rss_mb("VmHWM:") - base


def apply_overrides(config, overrides):
  for key, value in overrides.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


def numpy_state_dict(net):
  """Copies of net's weights: the torch side's training steps change the tensors in place."""
  return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def build_unet(name):
  """A random diffusers UNet2DModel of UNETS[name], the config of ours and its parameters converted from it."""
  torch.manual_seed(0)
  unet = UNet2DModel(**UNETS[name], **COMMON)
  config = apply_overrides(get_base_config(), convert.unet_overrides(dict(unet.config)))
  return unet, config, convert.convert_params(numpy_state_dict(unet), convert.abstract_params(config))
