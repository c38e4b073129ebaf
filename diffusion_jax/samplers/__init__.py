"""Samplers by name. Every sampler has the signature
`sampler(model_fn, schedule, shape, rng, *, num_steps, y=None, prediction="eps", clip_x0=False, spacing="leading", ...)`
and its whole loop compiles into one XLA program."""
from diffusion_jax.samplers.common import SAMPLERS, get_sampler, parse_runs  # noqa: F401
from diffusion_jax.samplers import ddim, ddpm  # noqa: F401  (registers the samplers)
