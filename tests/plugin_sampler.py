"""A sampler defined outside the package, as a researcher's own module would be: `--config.imports=plugin_sampler`
registers it, `--config.sample.runs=mine:10` selects it (tests/test_cli.py)."""
import jax.numpy as jnp

from diffusion_jax.samplers.common import eps_x0, register_sampler, scan_sampler


@register_sampler("mine")
def mine(model_fn, schedule, shape, rng, *, num_steps, y=None, prediction="eps", clip_x0=False, spacing="leading"):
  """Deterministic DDIM written out: x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps_hat."""
  def step(model_fn, x, xs):
    t, abar, abar_prev, _ = xs
    eps, x0 = eps_x0(model_fn, x, t, abar, y, prediction, clip_x0)
    return jnp.sqrt(abar_prev) * x0 + jnp.sqrt(1.0 - abar_prev) * eps
  return scan_sampler(model_fn, step, schedule, shape, rng, num_steps, spacing)
