"""Two ways to run a compiled federated round (:func:`jaxseg.fed.simulate.round_`),
same result:

* :func:`vmap_round`: the whole round is one compiled program; with several devices
  the client axis is split over a ``clients`` mesh axis (``shard_map``: each device
  trains its clients, the weighted sums are ``psum``'d);
* :func:`loop_round`: a compiled server part, one compiled client function called per
  client, a compiled aggregation — how frameworks that train clients one by one
  simulate, and faster on CPU (XLA:CPU's grouped convolutions are slow).

Data (:func:`place`): ``device`` keeps the training arrays on the device and gathers
batches inside the round; ``stream`` draws indices on the device, gathers the batches
on the host and sends them every round. ``data_devices`` > 1 (vmap): the mesh is
``clients x data``; each group of ``data_devices`` devices trains its clients with
every batch split over the group. The batch is split only where a group holds one
client: several vmapped clients make grouped convolutions, which XLA keeps whole.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxseg.fed import simulate


@dataclasses.dataclass(frozen=True)
class Placed:
  """A federation's data and keys on its mesh: what both backends run on."""

  fed: simulate.Federation
  mesh: jax.sharding.Mesh
  data: simulate.ClientData  # sharded by client rows
  arrays: dict  # the training arrays on the host
  device_arrays: dict  # ... and on the device ({} when streamed)
  probe: jax.Array
  keys: dict  # train, search
  data_key: jax.Array
  fetch: Callable  # (arrays, xs) -> batches
  streamed: bool

  def indices(self, step, data):
    """This round's ``(client indices, server indices or None)``."""
    server = None
    if self.fed.scenario == "label_at_server":
      server = simulate.server_indices(self.fed, data, self.data_key, step)
    return simulate.client_indices(self.fed, data, self.data_key, step), server

  def host_batches(self, state):
    """This round's batches gathered on the host (``stream``), or None."""
    if not self.streamed:
      return None
    client_idx, server_idx = jax.device_get(self.draw(state.step, self.data))
    client_xs = jax.device_put(simulate.gather(self.arrays, client_idx), self.rows)
    return client_xs, None if server_idx is None else simulate.gather(self.arrays, server_idx)

  @functools.cached_property
  def draw(self) -> Callable:
    return jax.jit(self.indices)

  @property
  def rows(self) -> NamedSharding:
    return NamedSharding(self.mesh, P("clients"))


def place(fed, data, arrays, probe, train_key, placement: str, devices, data_devices: int = 1):
  """A :class:`Placed` over ``devices`` (``len(devices) // data_devices`` client groups)."""
  shape = (len(devices) // data_devices, data_devices)
  mesh = jax.make_mesh(
    shape, ("clients", "data"), axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices
  )
  rows, replicated = NamedSharding(mesh, P("clients")), NamedSharding(mesh, P())
  # Client tables split by rows; the server's replicated.
  data_sharding = jax.tree.map(lambda _: rows, data).replace(server=replicated, server_n=replicated)
  fetch = simulate.gather if placement == "device" else (lambda _, x: x)
  if data_devices > 1:  # a client's batches split over the data axis of its group
    unsplit, split = fetch, NamedSharding(mesh, P("data"))
    fetch = lambda arrays, x: jax.lax.with_sharding_constraint(unsplit(arrays, x), split)  # noqa: E731
  keys = {"train": jax.random.fold_in(train_key, 0), "search": jax.random.fold_in(train_key, 1)}
  return Placed(
    fed=fed,
    mesh=mesh,
    data=jax.device_put(data, data_sharding),
    arrays=arrays,
    device_arrays=jax.device_put(arrays, replicated) if placement == "device" else {},
    probe=jax.device_put(probe, replicated),
    keys=keys,
    data_key=jax.random.fold_in(train_key, 2),
    fetch=fetch,
    streamed=placement != "device",
  )


def vmap_round(placed: Placed) -> Callable:
  """``run_round(state) -> (state, metrics)``: the round as one compiled program."""
  fed, mesh = placed.fed, placed.mesh

  def map_clients(block, shared, *client_args):
    if mesh.size == 1:
      return block(shared, *client_args)
    # Each device trains its shard of the clients; their weighted sums are combined.
    summed = lambda *args: jax.lax.psum(block(*args), "clients")  # noqa: E731
    mapped = jax.shard_map(
      summed,
      mesh=mesh,
      in_specs=(P(), *(P("clients"),) * len(client_args)),
      out_specs=P(),
      axis_names={"clients"},  # manual; the data axis is left to XLA
      check_vma=False,
    )
    return mapped(shared, *client_args)

  @functools.partial(jax.jit, donate_argnums=0)
  def one_program(state, data, arrays, probe, xs):
    client_xs, server_xs = placed.indices(state.step, data) if xs is None else xs
    return simulate.round_(
      fed, state, data, client_xs, server_xs, placed.fetch, probe, placed.keys, arrays, map_clients
    )

  def run_round(state):
    xs = placed.host_batches(state)
    return one_program(state, placed.data, placed.device_arrays, placed.probe, xs)

  return run_round


def loop_round(placed: Placed) -> Callable:
  """``run_round(state) -> (state, metrics)`` calling one compiled client function per
  live client (padding rows weigh nothing: skipped). Needs a one-device mesh."""
  fed, data = placed.fed, placed.data

  @jax.jit
  def prepare(state, data, arrays, probe, xs):
    client_xs, server_xs = placed.indices(state.step, data) if xs is None else xs
    shared = simulate.broadcast(fed, state, server_xs, placed.fetch, probe, placed.keys, arrays)
    return client_xs, shared

  block = jax.jit(functools.partial(simulate.clients, fed, placed.fetch))
  add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))
  finish = jax.jit(functools.partial(simulate.finish, fed), donate_argnums=0)
  # Each live client's row, steps and size, sliced once.
  per_client = [
    (slice(c, c + 1), jnp.arange(c, c + 1), data.steps[c : c + 1], data.size[c : c + 1])
    for c in np.flatnonzero(np.asarray(data.size) > 0)
  ]

  def run_round(state):
    xs = placed.host_batches(state)
    client_xs, (shared, metrics) = prepare(state, data, placed.device_arrays, placed.probe, xs)
    total = None
    for one, row, steps, size in per_client:
      part = block(shared, row, jax.tree.map(lambda x, one=one: x[one], client_xs), steps, size)
      total = part if total is None else add(total, part)
    return finish(state, shared, total, metrics)

  return run_round


BACKENDS = {"vmap": vmap_round, "loop": loop_round}


def compile_round(
  fed, data, arrays, probe, train_key, placement, devices, client_map="vmap", data_devices=1
):
  """``(run_round(state) -> (state, metrics), place_state)`` of ``client_map``
  (``vmap`` or ``loop``; ``loop`` runs on the first device)."""
  if client_map == "loop":
    devices = devices[:1]
  placed = place(fed, data, arrays, probe, train_key, placement, devices, data_devices)
  replicated = NamedSharding(placed.mesh, P())
  return BACKENDS[client_map](placed), lambda state: jax.device_put(state, replicated)
