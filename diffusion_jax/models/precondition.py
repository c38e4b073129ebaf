"""EDM's preconditioning (Karras et al. 2022, Sec. 5 and Table 1): a denoiser D(x; sigma) = c_skip x + c_out
F(c_in x, c_noise) around any backbone F, for x = x_0 + sigma n, so that the network's input and training target
have unit variance at every noise level for data of standard deviation sigma_data."""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from diffusion_jax.parametrization import bcast


def edm_scalings(sigma, sigma_data=0.5):
  """(c_skip, c_out, c_in, c_noise) of Karras et al. 2022, Table 1: sigma_data^2 / (sigma^2 + sigma_data^2),
  sigma sigma_data / sqrt(sigma^2 + sigma_data^2), 1 / sqrt(sigma^2 + sigma_data^2), ln(sigma) / 4."""
  total = jnp.square(sigma) + sigma_data**2
  return sigma_data**2 / total, sigma * sigma_data / jnp.sqrt(total), 1.0 / jnp.sqrt(total), jnp.log(sigma) / 4.0


class EDMPrecond(nn.Module):
  """D(x; sigma) for x [B, ...] and sigma [B]: `backbone`(c_in x, c_noise, y, train) scaled and skipped; the
  backbone's parameters live under 'backbone'."""
  backbone: nn.Module
  sigma_data: float = 0.5

  @nn.compact
  def __call__(self, x, sigma, y: Optional[jnp.ndarray] = None, train: bool = False):
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
    f = self.backbone(bcast(c_in, x) * x, c_noise, y, train)
    return bcast(c_skip, x) * x + bcast(c_out, x) * f.astype(x.dtype)
