"""Data parallelism by sharded ``jax.jit``: a ``data`` mesh axis over the devices.

The batch is split along its first axis over the ``data`` axis; parameters,
BatchNorm statistics and optimizer state are replicated, or with FSDP
(``config.mesh.fsdp``) split along one dimension of each large array, gathered by
XLA where a computation needs them. The step function itself does not change: XLA
inserts the gradient all-reduce (and the all-gathers of FSDP), so one device and N
devices compute the same training trajectory up to the order of floating-point
sums. This is what ``jax.pmap`` did with explicit ``pmean`` calls, for any mesh.

With several processes (multi-host) the mesh spans every process's devices; each
process holds its slice of the global batch (:func:`put_batch`) and the replicated
state, and :func:`fetch` gathers arrays for the host.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxseg.errors import UserError

AXIS = "data"
FSDP_MIN_SIZE = 2**14  # smaller arrays stay replicated: gathering them costs more than it saves


def make_mesh(mesh_config) -> Mesh:
  """A 1-d ``data`` mesh over the first ``mesh_config.devices`` devices (0: all)."""
  devices = jax.devices()
  count = mesh_config.devices or len(devices)
  if not 0 < count <= len(devices):
    raise UserError(
      f"config.mesh.devices={mesh_config.devices}: this run sees {len(devices)} devices."
    )
  return Mesh(np.array(devices[:count]), (AXIS,))


def check_batch(batch_size: int, mesh: Mesh, key: str = "config.train.batch_size") -> None:
  """The global batch must split evenly over the devices (and so over processes)."""
  if batch_size % mesh.size:
    raise UserError(
      f"{key}={batch_size} does not divide by the {mesh.size} devices of the data mesh; "
      f"use a multiple of {mesh.size} or set config.mesh.devices."
    )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def state_shardings(abstract_state, mesh: Mesh, fsdp: bool = False):
  """Replicated leaves, or with ``fsdp`` each array of at least ``FSDP_MIN_SIZE``
  elements split along its largest dimension that divides by the device count."""

  def leaf(x):
    if fsdp and x.size >= FSDP_MIN_SIZE:
      dims = sorted(range(x.ndim), key=lambda d: -x.shape[d])
      for d in dims:
        if x.shape[d] % mesh.size == 0:
          return NamedSharding(mesh, P(*[AXIS if i == d else None for i in range(x.ndim)]))
    return replicated(mesh)

  return jax.tree.map(leaf, abstract_state)


def put_batch(batch, mesh: Mesh):
  """This process's slice of the global batch -> global arrays sharded over ``data``."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def put(tree, sharding: NamedSharding):
  """Host arrays, the same on every process, -> global arrays on ``sharding`` (each
  process builds only the shards of its own devices)."""
  return jax.tree.map(
    lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda i: np.asarray(x)[i]),
    tree,
  )


def put_replicated(tree, mesh: Mesh):
  """Host arrays, the same on every process -> global arrays replicated over ``mesh``."""
  return put(tree, replicated(mesh))


def fetch(tree):
  """Global arrays -> numpy on every process (gathered across processes if needed)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)
