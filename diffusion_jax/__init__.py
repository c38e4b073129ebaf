"""diffusion_jax: a JAX/Flax research codebase for diffusion models.

Importing the package adds this codebase's XLA CPU flags to XLA_FLAGS (xla_flags.set_cpu_flags; flags already set
are kept). XLA reads them when JAX creates its CPU backend, so every entry point (the CLI, experiments, benchmarks,
a notebook) has them without setting them first; they change nothing on GPUs and TPUs."""
from diffusion_jax.xla_flags import set_cpu_flags

set_cpu_flags()
