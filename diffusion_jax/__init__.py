"""diffusion_jax: a JAX/Flax research codebase for diffusion models."""
