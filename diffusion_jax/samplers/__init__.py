"""Samplers by name. Every sampler has the signature
`sampler(model_fn, schedule_or_sde, shape, rng, *, num_steps, y=None, prediction="eps", ...) -> x_0`
and its whole loop compiles into one XLA program. ddpm, ddim, dpm_solver++ (1-3M), dpm_solver++_2s, sde_dpm_solver++,
euler_ancestral, unipc, deis and edm take a discrete Schedule (and clip_x0, spacing); pc / ode / flow take a continuous
path (sde.py: vp, subvp, ve, edm, rectified_flow, cosine_interpolant)."""
from diffusion_jax.samplers.common import SAMPLERS, get_sampler, parse_runs  # noqa: F401
from diffusion_jax.samplers import (ddim, ddpm, deis, dpm_solver, dpm_solver_sde, dpm_solver_singlestep,  # noqa: F401
                                    edm, euler_ancestral, flow, ode, pc, unipc)  # (registers the samplers)
