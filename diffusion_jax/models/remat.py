"""Gradient checkpointing (rematerialisation) of a network's blocks, chosen by name with config.model.remat: `none`
keeps every activation for the backward pass, `full` keeps only each block's inputs and recomputes the block, `dots`
also keeps the outputs of its matrix products without batch dimensions (maxdiffusion's remat_policy). A policy changes
what the backward pass stores, never the parameters: their names and values are the same under every policy."""
import functools

import flax.linen as nn
import jax

REMAT_POLICIES = ("none", "full", "dots")
_SAVEABLE = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}  # None: save nothing


def check_remat(policy):
  """Raises, naming the valid policies, when `policy` is not one of REMAT_POLICIES."""
  if policy not in REMAT_POLICIES:
    raise ValueError(f"Unknown model.remat {policy!r}; valid: {', '.join(REMAT_POLICIES)}")


@functools.lru_cache(maxsize=None)
def remat(module_cls, policy, static_argnums=()):
  """`module_cls` whose __call__ is rematerialised under `policy` (the class itself for `none`). static_argnums are
  the positions of __call__'s Python arguments (flags such as `train`), counting `self` as 0 (flax's nn.remat)."""
  check_remat(policy)
  if policy == "none":
    return module_cls
  return nn.remat(module_cls, policy=_SAVEABLE[policy], static_argnums=static_argnums)


def compiler_options(policy):
  """The XLA options under which a compiled step keeps `policy`'s recomputation: XLA's CPU pipeline expands the
  optimization barriers that hold a rematerialised block apart from its forward pass (cse_barrier_expander), after
  which common-subexpression elimination merges the two and every activation is stored again, so on a CPU backend that
  pass is disabled; accelerator compilers keep the barriers as they are."""
  check_remat(policy)
  if policy == "none" or jax.default_backend() != "cpu":
    return {}
  return {"xla_disable_hlo_passes": "cse_barrier_expander"}
