"""Device mesh and shardings, all through jax.jit: a `data` x `fsdp` mesh over every device of every process. A global
batch is split over both axes; with fsdp > 1 each large tensor of the train state (parameters, EMA, optimizer
moments) is split over `fsdp` along its largest divisible dimension, so a model larger than one device's memory
trains. Each process places only its own rows of a global batch."""
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
MIN_SHARDED_SIZE = 2 ** 12  # tensors with fewer elements stay replicated: splitting them saves little, costs a gather


def make_mesh(fsdp=1, devices=None):
  """A (data, fsdp) mesh of `devices` (default: every device of every process, process by process)."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if fsdp < 1 or n % fsdp:
    raise ValueError(f"parallel.fsdp={fsdp} does not divide the {n} devices ({jax.process_count()} process(es)); "
                     f"valid: {', '.join(str(k) for k in range(1, n + 1) if n % k == 0)}")
  return Mesh(np.asarray(devices).reshape(n // fsdp, fsdp), AXES)


def mesh_for(config, devices=None):
  return make_mesh(config.parallel.fsdp, devices)


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_sharded(mesh):
  """The leading (batch) axis split over every device: data x fsdp."""
  return NamedSharding(mesh, P(AXES))


def param_spec(shape, fsdp):
  """Split the largest dimension divisible by fsdp (the first of equals) over `fsdp`; small tensors are replicated."""
  if fsdp == 1 or int(np.prod(shape)) < MIN_SHARDED_SIZE:
    return P()
  for i in sorted(range(len(shape)), key=lambda i: -shape[i]):
    if shape[i] % fsdp == 0:
      return P(*[("fsdp" if j == i else None) for j in range(len(shape))])
  return P()


def state_shardings(tree, mesh):
  """NamedShardings for a train state (arrays or ShapeDtypeStructs): param_spec of each leaf over the mesh's fsdp."""
  return jax.tree.map(lambda a: NamedSharding(mesh, param_spec(a.shape, mesh.shape["fsdp"])), tree)


def bytes_per_device(tree):
  """(total bytes of a tree of arrays / ShapeDtypeStructs with shardings, the bytes one device holds)."""
  leaves = jax.tree.leaves(tree)
  total = sum(a.size * a.dtype.itemsize for a in leaves)
  return total, sum(np.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize for a in leaves)


def check_batch(batch_size, mesh, what="batch size"):
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f"The global {what} {batch_size} is not divisible by the {n} devices of the mesh (data="
                     f"{mesh.shape['data']} x fsdp={mesh.shape['fsdp']}, {jax.process_count()} process(es)); use a "
                     f"multiple of {n}")


def local_rows(batch_size, mesh):
  """slice(start, stop): the rows of a global batch that this process's devices hold under batch_sharded(mesh)."""
  index = batch_sharded(mesh).addressable_devices_indices_map((batch_size,))
  rows = sorted({(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop) for s in index.values()})
  start, stop = rows[0][0], rows[-1][1]
  if sum(b - a for a, b in rows) != stop - start:
    raise ValueError(f"This process's devices hold rows {rows} of the batch, not one contiguous block; build the mesh "
                     "with each process's devices next to each other (parallel.make_mesh does)")
  return slice(start, stop)


def shard_local_batch(tree, mesh, batch_size):
  """Global arrays of a batch of `batch_size` rows from this process's rows (local_rows) of it, as host arrays."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x),
                                                                     (batch_size,) + np.shape(x)[1:]), tree)


def shard_batch(tree, mesh):
  """Global arrays from host arrays of the whole global batch (the same on every process), split along axis 0."""
  batch_size = len(jax.tree.leaves(tree)[0])
  rows = local_rows(batch_size, mesh)
  return shard_local_batch(jax.tree.map(lambda x: np.asarray(x)[rows], tree), mesh, batch_size)


def to_host(x):
  """A global array as one numpy array, on every process (gathered across processes when it spans several)."""
  return np.asarray(x) if x.is_fully_addressable else np.asarray(multihost_utils.process_allgather(x, tiled=True))
