"""Two ways to run a compiled federated round (:func:`jaxseg.fed.simulate.round_`),
same result:

* :func:`vmap_round`: the whole round is one compiled program; with several devices
  the client axis is split over a ``clients`` mesh axis (``shard_map``: each device
  trains its clients, the weighted sums are ``psum``'d). Each device's clients are
  vmapped (``client_map`` ``vmap``) or run one after another (``scan``: no grouped
  convolutions, which XLA:GPU runs slowly for 3-D networks);
* :func:`loop_round`: a compiled server part, one compiled client function called per
  client, a compiled aggregation — how frameworks that train clients one by one
  simulate, and faster on CPU (XLA:CPU's grouped convolutions are slow).

Data (:func:`place`): ``device`` keeps the training arrays on the device, each client
group (device of the ``clients`` axis) with only its own clients' images, and gathers
batches inside the round; ``stream`` draws indices on the device, reads the batches
on the host and sends them every round (one process only). With several processes
(``JAXSEG_DISTRIBUTED=1``) the ``clients`` axis spans every process's devices and each
process reads and places only its own devices' client groups. ``data_devices`` > 1
(vmap): the mesh is ``clients x data``; each group of ``data_devices`` devices trains
its clients with every batch split over the group. The batch is split only where a
group holds one client: several vmapped clients make grouped convolutions, which XLA
keeps whole.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxseg.data import pipeline
from jaxseg.fed import aggregation, recipe, simulate, streams
from jaxseg.train import sharding


@dataclasses.dataclass(frozen=True)
class Placed:
  """A federation's data and keys on its mesh: what both backends run on."""

  fed: simulate.Federation
  mesh: jax.sharding.Mesh
  data: streams.ClientData  # sharded by client rows
  source: object  # the training split on the host (``take``, as a grain source)
  client_arrays: dict  # [groups, N, ...] split by client group ({} when streamed)
  server_arrays: dict  # [1, N, ...] the server's images, replicated ({} when streamed)
  probe: jax.Array
  keys: dict  # train, broadcast, recipe, data (the batches' indices)
  fetch: Callable  # (arrays, xs, key) -> batches
  streamed: bool

  def indices(self, step, data):
    """This round's :func:`indices`."""
    return indices(self.fed, self.keys, step, data)

  def host_batches(self, state):
    """This round's batches read on the host (``stream``), or None."""
    if not self.streamed:
      return None
    ids, client_idx, server_idx = jax.device_get(self.draw(state.step, self.data))
    client_xs = jax.device_put(host_gather(self.source, client_idx), self.rows)
    server_xs = None if server_idx is None else host_gather(self.source, server_idx)
    return ids, client_xs, server_xs

  @functools.cached_property
  def draw(self) -> Callable:
    return jax.jit(self.indices)

  @property
  def rows(self) -> NamedSharding:
    return NamedSharding(self.mesh, P("clients"))


def indices(fed, keys: dict, step, data):
  """A round's ``(client rows that train or None for all, their indices, server
  indices or None)``; the rows are drawn from the round's recipe key, the indices
  from the data key."""
  server, data_key = None, keys["data"]
  if fed.scenario == "label_at_server":
    server = streams.server_indices(fed, data, data_key, step)
  ids = None
  if fed.recipe.clients_per_round:
    ids = recipe.sample(fed.recipe, recipe.sample_key(keys["recipe"], step), data.size)
  sub = streams.rows_of(data, ids)
  return ids, streams.client_indices(fed, sub, data_key, step, ids), server


def host_gather(source, indices) -> dict:
  """:func:`jaxseg.fed.streams.gather` on the host, reading only ``indices``."""

  def one(idx):
    batch = pipeline.model_inputs(source.take(idx.ravel()))
    return {k: v.reshape(*idx.shape, *v.shape[1:]) for k, v in batch.items()}

  return jax.tree.map(one, indices)


def members(data: streams.ClientData, groups: int) -> list[np.ndarray]:
  """The training images each of ``groups`` client groups (rows split evenly) reads."""
  rows = len(data.size) // groups
  held = [
    np.concatenate([data.labeled[r, : data.labeled_n[r]], data.unlabeled[r, : data.unlabeled_n[r]]])
    for r in range(len(data.size))
  ]
  return [np.unique(np.concatenate(held[g * rows : (g + 1) * rows])) for g in range(groups)]


def filled(source, images: list[np.ndarray], where: NamedSharding, length: int, inputs) -> dict:
  """Arrays ``[len(images), length, ...]`` on ``where`` (split along the first axis):
  slab ``g`` holds ``inputs`` (the model inputs) of ``images[g]`` at their indices,
  zeros elsewhere. Only the slabs of this process's devices are read and built."""
  first = inputs(source.take([0]))

  @functools.cache
  def slab(g: int) -> dict:
    out = {k: np.zeros((length, *v.shape[1:]), v.dtype) for k, v in first.items()}
    if len(images[g]):
      for k, v in inputs(source.take(images[g])).items():
        out[k][images[g]] = v
    return out

  def field(k):
    shape = (len(images), length, *first[k].shape[1:])
    return jax.make_array_from_callback(
      shape, where, lambda i: np.stack([slab(g)[k] for g in range(len(images))[i[0]]])[i[1:]]
    )

  return {k: field(k) for k in first}


@dataclasses.dataclass(frozen=True)
class Reader:
  """How the round reads training data: ``inputs`` turns what ``source.take`` gives
  into the arrays held on the device, ``gather(arrays, indices, key)`` a step's
  batches from them (images: :func:`jaxseg.fed.streams.gather`; volumes: patches)."""

  inputs: Callable = pipeline.model_inputs
  gather: Callable = streams.gather


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where and how a federation's round runs: ``data`` ``device`` (the training arrays
  held on the devices) or ``stream`` (read on the host each round); over ``devices``
  (default: the first); clients by ``client_map`` (``vmap``, ``scan``, ``loop``), each
  client group ``data_devices`` devices wide; its images read by ``reader``."""

  data: str = "device"
  devices: tuple = ()
  client_map: str = "vmap"
  data_devices: int = 1
  reader: Reader = Reader()


def place(fed, data, source, probe, train_key, where: Placement = Placement()) -> Placed:
  """A :class:`Placed` over ``where.devices`` (``len(devices) // data_devices`` client
  groups)."""
  placement, data_devices, reader = where.data, where.data_devices, where.reader
  devices = list(where.devices) or jax.devices()[:1]
  groups = len(devices) // data_devices
  mesh = jax.make_mesh(
    (groups, data_devices),
    ("clients", "data"),
    axis_types=(jax.sharding.AxisType.Auto,) * 2,
    devices=devices,
  )
  rows, replicated = NamedSharding(mesh, P("clients")), NamedSharding(mesh, P())
  # Client tables split by rows; the server's replicated.
  tables = sharding.put(data.replace(server=None, server_n=None), rows)
  server_tables = {"server": data.server, "server_n": data.server_n}
  tables = tables.replace(**sharding.put(server_tables, replicated))
  client_arrays, server_arrays = {}, {}
  if placement == "device":
    n, server = len(source), data.server[: data.server_n]
    client_arrays = filled(source, members(data, groups), rows, n, reader.inputs)
    server_arrays = filled(source, [server], replicated, n if len(server) else 1, reader.inputs)
  fetch = reader.gather if placement == "device" else (lambda _, x, key: x)
  if data_devices > 1:  # a client's batches split over the data axis of its group
    unsplit, split = fetch, NamedSharding(mesh, P("data"))
    fetch = lambda arrays, x, key: jax.lax.with_sharding_constraint(unsplit(arrays, x, key), split)  # noqa: E731
  keys = {
    "train": jax.random.fold_in(train_key, 0),
    "broadcast": jax.random.fold_in(train_key, 1),
    "recipe": jax.random.fold_in(train_key, 3),
    "data": jax.random.fold_in(train_key, 2),
  }
  return Placed(
    fed=fed,
    mesh=mesh,
    data=tables,
    source=source,
    client_arrays=client_arrays,
    server_arrays=server_arrays,
    probe=sharding.put(probe, replicated),
    keys=keys,
    fetch=fetch,
    streamed=placement != "device",
  )


def vmap_round(placed: Placed) -> Callable:
  """``run_round(state) -> (state, metrics)``: the round as one compiled program."""
  fed, mesh = placed.fed, placed.mesh

  def map_clients(clients, shared, arrays, block):
    if mesh.size == 1:
      return clients(shared, arrays, block)

    # Each device trains its shard of the clients; their sums are combined, their
    # stacked rows concatenated.
    def summed(*args):
      part = clients(*args)
      return part._replace(summed=jax.lax.psum(part.summed, "clients"))

    mapped = jax.shard_map(
      summed,
      mesh=mesh,
      in_specs=(P(), P("clients"), P("clients")),
      out_specs=aggregation.Part(P(), P("clients"), P("clients")),
      axis_names={"clients"},  # manual; the data axis is left to XLA
      check_vma=False,
    )
    return mapped(shared, arrays, block)

  body = round_program(fed, placed.fetch, map_clients)

  @functools.partial(jax.jit, donate_argnums=0)
  def one_program(state, data, server_arrays, client_arrays, probe, xs):
    return body(state, data, server_arrays, client_arrays, probe, xs, placed.keys)

  def args(state):
    xs = placed.host_batches(state)
    return state, placed.data, placed.server_arrays, placed.client_arrays, placed.probe, xs

  def run_round(state):
    return one_program(*args(state))

  run_round.lower = lambda state: one_program.lower(*args(state))  # memory_analysis, HLO
  return run_round


def round_program(fed, fetch, map_clients=None) -> Callable:
  """The round as a pure function of everything that differs between runs of one
  federation (what :func:`vmap_round` compiles, and ``--vmap_seeds`` vmaps over seeds):
  ``(state, data, server_arrays, client_arrays, probe, xs, keys) -> (state, metrics)``;
  ``xs`` None draws the batches' indices inside."""

  def body(state, data, server_arrays, client_arrays, probe, xs, keys):
    ids, client_xs, server_xs = indices(fed, keys, state.step, data) if xs is None else xs
    inputs = simulate.Inputs(data, ids, client_xs, server_xs, probe, server_arrays, client_arrays)
    extra = () if map_clients is None else (map_clients,)
    return simulate.round_(fed, state, inputs, fetch, keys, *extra)

  return body


@dataclasses.dataclass(frozen=True)
class LoopParts:
  """The compiled parts of a round run client by client (:func:`loop_round`, and a real
  federation: :mod:`jaxseg.flower.app`, where the server runs ``prepare``, ``add`` and
  ``conclude`` and each site ``block`` on its own images).

  ``prepare(state, data, arrays, probe, xs) -> (ids, client_xs, server_xs, (shared,
  metrics))``; ``block(shared, client_arrays, block) -> part`` (a block of clients'
  contributions and what they keep, :func:`jaxseg.fed.simulate.clients`);
  ``add(part, part)``;
  ``conclude(state, shared, total, metrics, side) -> (state, metrics)`` (``side``:
  :class:`jaxseg.fed.simulate.ServerSide`).
  """

  prepare: Callable
  block: Callable
  add: Callable
  conclude: Callable


def loop_parts(placed: Placed) -> LoopParts:
  fed = placed.fed

  @jax.jit
  def prepare(state, data, arrays, probe, xs):
    ids, client_xs, server_xs = placed.indices(state.step, data) if xs is None else xs
    side = simulate.ServerSide(server_xs, arrays, data.server_n)
    shared = simulate.broadcast(fed, placed.fetch, state, side, probe, placed.keys)
    return ids, client_xs, server_xs, shared

  return LoopParts(
    prepare=prepare,
    block=jax.jit(functools.partial(simulate.clients, fed, placed.fetch)),
    add=jax.jit(aggregation.add),
    conclude=jax.jit(functools.partial(simulate.conclude, fed, placed.fetch), donate_argnums=0),
  )


def loop_round(placed: Placed) -> Callable:
  """``run_round(state) -> (state, metrics)`` calling one compiled client function per
  live client (padding rows weigh nothing: skipped). Needs a one-device mesh."""
  data, parts = placed.data, loop_parts(placed)
  # Each live client's row, steps and size, sliced once.
  per_client = {
    int(c): (jnp.arange(c, c + 1), data.steps[c : c + 1], data.size[c : c + 1])
    for c in np.flatnonzero(np.asarray(data.size) > 0)
  }

  def run_round(state):
    xs = placed.host_batches(state)
    arrays = placed.server_arrays
    ids, client_xs, server_xs, (shared, metrics) = parts.prepare(
      state, data, arrays, placed.probe, xs
    )
    trained = range(len(data.size)) if ids is None else np.asarray(ids).tolist()
    total = None
    for i, c in enumerate(trained):  # the i-th trained row is client c
      if c not in per_client:  # a padding row weighs nothing
        continue
      row, steps, size = per_client[c]
      xs_c = jax.tree.map(lambda x, i=i: x[i : i + 1], client_xs)
      local = jax.tree.map(lambda x, c=c: x[c : c + 1], state.clients)
      block = simulate.Block(row, xs_c, steps, size, local)
      part = parts.block(shared, placed.client_arrays, block)
      total = part if total is None else parts.add(total, part)
    side = simulate.ServerSide(server_xs, arrays, data.server_n)
    return parts.conclude(state, shared, total, metrics, side)

  return run_round


BACKENDS = {"vmap": vmap_round, "scan": vmap_round, "loop": loop_round}


def compile_round(fed, data, source, probe, train_key, where: Placement = Placement()):
  """``(run_round(state) -> (state, metrics), state_sharding)`` of ``where.client_map``
  (``vmap``; ``scan``: the same program with each device's clients in sequence;
  ``loop``, on the first device); the server state goes on ``state_sharding``
  (replicated over the round's mesh)."""
  if where.client_map == "loop":
    where = dataclasses.replace(where, devices=tuple(where.devices)[:1])
  fed = dataclasses.replace(fed, sequential=where.client_map == "scan")
  placed = place(fed, data, source, probe, train_key, where)
  return BACKENDS[where.client_map](placed), NamedSharding(placed.mesh, P())
