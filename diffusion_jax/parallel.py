"""Device mesh and shardings: the global batch is split over the `data` axis, parameters are replicated."""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None):
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_sharded(mesh):
  return NamedSharding(mesh, P("data"))


def check_batch(batch_size, mesh, what="batch size"):
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f"The global {what} {batch_size} is not divisible by the {n} devices of the mesh; "
                     f"use a multiple of {n}")


def shard_batch(tree, mesh):
  """Places host arrays of a global batch onto the mesh, split along the leading axis."""
  return jax.device_put(tree, batch_sharded(mesh))
