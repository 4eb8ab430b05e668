"""One federated round as one compiled function (pure; vmapped over clients).

Client states are stacked on a leading axis. A round, in this order:

1. **server training** (label-at-server only, ``server_training="before_clients"``):
   the server runs ``server_steps`` of the method's own step from the global model on
   its labeled images (their images also serve as its unlabeled batch); see
   :data:`SERVER_TRAINING` for where else it can train;
2. **the method's server hook** (:class:`jaxseg.semi.Broadcast`; FedWeP: the seed
   search, :mod:`jaxseg.semi.rwp.search`) makes what the method sends beyond its
   networks, from the networks about to be sent;
3. **broadcast**: every client starts from the server's exchanged networks (parameters
   and BatchNorm statistics) with a fresh optimizer state;
4. **local training**: ``jax.vmap`` over clients of a ``lax.scan`` over local steps of
   the method's step (given the hook's payload as ``extra=``). A client with fewer
   steps than the longest (``local_epochs`` mode) or a padding client (no data, zero
   steps) is masked: ``where(step < steps_c, new, old)``;
5. **aggregation** (:mod:`jaxseg.fed.aggregation`, with the recipe's pieces of
   :mod:`jaxseg.fed.recipe`): each client's update ``delta = W_client - W``
   (attacked, clipped, compressed as the recipe says) is checked (a non-finite update
   weighs 0) and aggregated — by default the mean weighted by client data size
   (padding clients weigh 0) from the clients' sums, or a robust rule over the
   stacked updates; DP's noise is added; the server applies
   the pseudo-gradient ``-mean`` with its optax optimizer (``sgd(1.0)`` is FedAvg,
   ``adam`` FedAdam), and takes the weighted mean of the BatchNorm statistics.

Client sampling (``fed.recipe.clients_per_round`` K of N) picks the rows that train
before the round (:meth:`jaxseg.fed.backends.Placed.indices`): the compiled round sees
K rows, whatever N.

Data: ``xs`` holds, per client and local step, either indices into the training
arrays (data on the device; gathered inside the step) or the batches themselves
(streamed per round); ``fetch`` turns one step's ``xs`` (and a key) into batches, so
both modes run the same computation; a volume run's fetch draws a patch from each
indexed case (:func:`jaxseg.data.patches.sample`, positions keyed per participant and
step). On the device, each client group (a device of the
``clients`` mesh axis) holds its own copy of the training arrays in which only its
clients' images are filled in (``client_arrays [groups, N, ...]``), and the server
one with only its own (``server_arrays``): a process of a multi-host run reads and
holds no other client's images. Batch indices: :func:`jaxseg.fed.streams.stream_of`.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxseg.errors import UserError
from jaxseg.fed import aggregation, algorithms, streams
from jaxseg.fed import recipe as recipe_lib
from jaxseg.fed.aggregation import params_of, stats_of
from jaxseg.semi import Method
from jaxseg.train import state as state_lib
from jaxseg.train import step as step_lib

SCENARIOS = ("label_at_client", "label_at_server")
# Label-at-server: where the server's supervised training sits in a round (the FedWeP
# paper does not say). ``before_clients``: the server trains the global model, the
# clients start from its result and their average is the new global model (evaluated);
# ``with_clients``: the server trains from the global model alongside the clients and
# its model joins their average, weighted by its labeled images; ``after_clients``:
# the clients' average, fine-tuned on the server's labels, is the new global model.
SERVER_TRAINING = ("before_clients", "with_clients", "after_clients")
FETCH = 2**31 - 2  # folded into a participant's key for the keys of its batches


class ServerState(struct.PyTreeNode):
  step: jax.Array  # rounds done
  nets: dict  # name -> Net (opt_state None): the global model(s)
  opt_state: Any  # the server optimizer's state over {name: params}
  recipe: dict = struct.field(default_factory=dict)  # its pieces' state (jaxseg.fed.recipe.init)
  # What each client keeps between rounds, stacked over the N clients (FedBN's
  # BatchNorm, SCAFFOLD's c_i: jaxseg.fed.recipe.local_init); {} for most recipes.
  clients: dict = struct.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Federation:
  """The static parts of a simulation."""

  ctx: step_lib.Context
  method: Method
  server_tx: optax.GradientTransformation
  scenario: str
  local_steps: int  # the longest client's
  server_steps: int
  batch_size: int
  unlabeled_batch_size: int
  trainable: tuple[str, ...]  # nets with an optimizer
  broadcast_settings: Any  # the method's Broadcast settings (config.fed.<its section>)
  unroll: int = 1  # local steps unrolled per scan iteration (XLA:CPU runs loops slowly)
  sampling: str = "epochs"  # see jaxseg.fed.streams.stream_of
  server_training: str = "before_clients"  # label-at-server: see SERVER_TRAINING
  # Clients one after another inside the compiled round (``lax.map``) rather than
  # vmapped: vmapping a convolution over the clients' weights makes a grouped one,
  # which XLA:GPU runs slowly for 3-D networks (docs/volumes.md).
  sequential: bool = False
  recipe: recipe_lib.Recipe = recipe_lib.FEDAVG


class Block(NamedTuple):
  """A block of clients' per-row inputs to :func:`clients` (stacked on a leading axis):
  their numbers ``rows``, their batches (or indices) ``xs``, their local ``steps``, data
  ``size`` (0: a padding row) and what they kept from earlier rounds (``local``,
  :func:`jaxseg.fed.recipe.local_init`)."""

  rows: Any
  xs: Any
  steps: Any
  size: Any
  local: Any


class Shared(NamedTuple):
  """What every client of a round receives (:func:`broadcast`): the global ``nets``
  (after the server's own training where that comes first), the method hook's payload
  ``extra`` (None without one), the round's training ``key`` and number ``round``, the
  recipe's state across rounds ``recipe_state`` and the round's ``recipe_key``."""

  nets: dict
  extra: Any
  key: jax.Array
  round: jax.Array
  recipe_state: dict
  recipe_key: jax.Array


class ServerSide(NamedTuple):
  """The server's own training inputs (label-at-server): its batches' indices ``xs``,
  its training arrays ``[1, N, ...]`` and its labeled count ``n``."""

  xs: Any
  arrays: Any
  n: Any


def init(
  method: Method, ctx: step_lib.Context, server_tx, key, recipe=recipe_lib.FEDAVG
) -> ServerState:
  state = method.init(ctx, key)
  missing = set(state.nets) - set(method.exchanged)
  if missing:
    raise UserError(f"federated methods must exchange every network; not exchanged: {missing}.")
  nets = {n: v.replace(opt_state=None) for n, v in state.nets.items()}
  params, stats = params_of(nets), stats_of(nets)
  local = recipe_lib.local_init(recipe, params, stats)
  return ServerState(
    step=jnp.zeros((), jnp.int32),
    nets=nets,
    opt_state=server_tx.init(params),
    recipe=recipe_lib.init(recipe, params),
    clients=jax.tree.map(lambda x: jnp.broadcast_to(x, (recipe.num_clients, *x.shape)), local),
  )


def start(fed: Federation, nets: dict, step) -> state_lib.State:
  """A participant's method state from the global networks (fresh optimizer state)."""
  return state_lib.start(
    {
      n: v.replace(opt_state=fed.ctx.tx.init(v.params) if n in fed.trainable else None)
      for n, v in nets.items()
    },
    step,
  )


def _batches(fed: Federation, batch: dict) -> tuple[dict, dict]:
  """``(labeled, unlabeled)`` of one step; label-at-server clients get no labels."""
  if "labeled" in batch:
    return batch["labeled"], batch["unlabeled"]
  return step_lib.without_labels(batch["unlabeled"]), batch["unlabeled"]


def local_train(fed: Federation, state, xs, fetch: Callable, steps, key, extra):
  """``lax.scan`` of the method's step over ``xs``; steps ``>= steps`` are masked.
  ``fetch(x, key)`` makes a step's batches (the key: a volume run's patch positions);
  ``extra``: the server hook's payload, for methods that have one."""
  kwargs = {"extra": extra} if fed.method.broadcast is not None else {}
  fetch_key = jax.random.fold_in(key, FETCH)

  def body(carry, x):
    state, s = carry
    labeled, unlabeled = _batches(fed, fetch(x, jax.random.fold_in(fetch_key, s)))
    new, metrics = fed.method.step(fed.ctx, state, labeled, unlabeled, key, **kwargs)
    live = s < steps
    state = jax.tree.map(lambda a, b: jnp.where(live, a, b), new, state)
    return (state, s + 1), jax.tree.map(lambda m: jnp.where(live, m, 0.0), metrics)

  (state, _), metrics = jax.lax.scan(body, (state, jnp.zeros((), jnp.int32)), xs, unroll=fed.unroll)
  live = jnp.arange(jax.tree.leaves(xs)[0].shape[0]) < steps
  denom = jnp.maximum(live.sum(), 1)
  return state, jax.tree.map(lambda m: m.sum() / denom, metrics)


def clients(fed: Federation, fetch, shared: Shared, arrays, block: Block):
  """Local training of a block of clients (vmapped, or in sequence with
  ``fed.sequential``): their :class:`jaxseg.fed.aggregation.Part`, the contributions
  and what they keep (``local``, as :class:`Block`'s).

  ``shared``: what every client gets; ``arrays``: the block's group's training
  arrays ``[1, N, ...]`` for ``fetch``.
  ``summed`` adds over the block, so that blocks on several devices combine by
  ``psum``: the accepted updates' and BatchNorm statistics' sums weighted by the
  recipe's weights (:func:`jaxseg.fed.recipe.weights`), the total weight, the
  accepted clients and their metrics' sums (and adaptive clipping's count).
  ``stacked`` has a row per client (blocks concatenate): ``rejected`` (the client's
  number where its update was not finite, else -1), for a robust aggregator the
  updates themselves and whether each was accepted, and with compression ``wire``, the
  compressed updates' bytes (:func:`jaxseg.fed.compress.compressed`; unused in
  simulation, where XLA drops them).
  """
  batches = functools.partial(fetch, jax.tree.map(lambda v: v[0], arrays))
  client = functools.partial(client_round, fed, batches, shared)
  args = (block.rows, block.xs, block.steps, block.local)
  if fed.sequential:
    delta, stats, metrics, info, local, wire = jax.lax.map(lambda a: client(*a), args)
  else:
    delta, stats, metrics, info, local, wire = jax.vmap(client)(*args)
  results = aggregation.Results(delta, stats, metrics, info)
  summed, stacked = aggregation.contributions(fed.recipe, block.rows, block.size, results)
  if wire is not None:  # what a real site sends instead of its update (jaxseg.flower)
    stacked["wire"] = wire
  return aggregation.Part(summed, stacked, local)


def client_round(fed: Federation, batches, shared: Shared, c, xs, steps, local):
  """One client's round: ``(update, BatchNorm statistics, metrics, info, kept, wire)`` — its
  local training from the broadcast (FedBN: with its own BatchNorm; SCAFFOLD: its
  correction), its update through the recipe, what it keeps for the next round."""
  rc, nets, kept = fed.recipe, shared.nets, local
  if rc.algorithm == "fedbn":  # its own BatchNorm
    nets = {n: v.replace(**_own_bn(v, local, n)) for n, v in nets.items()}
  state = start(fed, nets, shared.round * fed.local_steps)
  if rc.algorithm == "scaffold":
    state = _corrected(fed, state, shared.recipe_state["c"], local["c"])
  key = jax.random.fold_in(shared.key, c)
  state, m = local_train(fed, state, xs, batches, steps, key, shared.extra)
  trained, stats = params_of(state.nets), stats_of(state.nets)
  delta = jax.tree.map(
    lambda a, b: a.astype(jnp.float32) - b.astype(jnp.float32), trained, params_of(nets)
  )
  info = {}
  if rc.algorithm == "fedbn":  # BatchNorm is neither sent nor averaged
    mask = algorithms.bn_mask(trained, stats)
    delta = jax.tree.map(lambda d, m: jnp.zeros_like(d) if m else d, delta, mask)
    local = algorithms.kept_bn(trained, stats)
  elif rc.algorithm == "scaffold":
    server_c = shared.recipe_state["c"]
    c_new, info["dc"] = algorithms.scaffold_local(rc, server_c, local["c"], delta, steps)
    local = {"c": c_new}
  recipe_key = jax.random.fold_in(shared.recipe_key, c)
  recipe_state = shared.recipe_state
  delta, more, wire, residual = recipe_lib.client_update(
    rc, delta, recipe_state, recipe_key, c, kept
  )
  if residual is not None:
    local = {**local, "residual": residual}
  return delta, stats, m, {**info, **more}, local, wire


def _own_bn(net, local: dict, name: str) -> dict:
  """FedBN: ``net``'s parameters with the client's BatchNorm, and its statistics."""
  mine = {k: local[k][name] for k in ("params", "batch_stats")}
  params, stats = algorithms.with_local_bn(net.params, net.batch_stats, mine)
  return {"params": params, "batch_stats": stats}


def _corrected(fed: Federation, state, c, c_i):
  """SCAFFOLD: each trained network's correction ``c - c_i`` in its optimizer state."""
  nets = dict(state.nets)
  for n in fed.trainable:
    first, *rest = nets[n].opt_state
    correction = jax.tree.map(jnp.subtract, c[n], c_i[n])
    nets[n] = nets[n].replace(opt_state=(first._replace(correction=correction), *rest))
  return state.replace(nets=nets)


def server_train(fed: Federation, fetch, nets: dict, shared: Shared, side: ServerSide):
  """The server's ``server_steps`` on its labeled images from ``nets`` (label-at-server)
  in the round of ``shared`` (:func:`broadcast`: its ``round`` and ``key``):
  ``(nets, metrics)``."""
  state = start(fed, nets, shared.round * fed.server_steps)
  batches = functools.partial(fetch, jax.tree.map(lambda v: v[0], side.arrays))
  key = jax.random.fold_in(shared.key, streams.SERVER)
  state, metrics = local_train(
    fed, state, side.xs, batches, jnp.asarray(fed.server_steps), key, None
  )
  nets = {n: v.replace(opt_state=None) for n, v in state.nets.items()}
  return nets, {f"server_{k}": v for k, v in metrics.items()}


def _server_training(fed: Federation) -> str | None:
  return fed.server_training if fed.scenario == "label_at_server" else None


def broadcast(fed: Federation, fetch, server: ServerState, side: ServerSide, probe, keys):
  """Steps 1-3 of a round: ``(shared, metrics)``, what every client receives
  (:class:`Shared`) and the server's metrics.
  ``probe``: the server's images the method's hook reads (a placeholder where it reads
  none)."""
  round_idx = server.step
  shared = Shared(
    nets=server.nets,
    extra=None,
    key=jax.random.fold_in(keys["train"], round_idx),
    round=round_idx,
    recipe_state=server.recipe,
    recipe_key=jax.random.fold_in(keys["recipe"], round_idx),
  )
  metrics = {}
  if _server_training(fed) == "before_clients":
    nets, metrics = server_train(fed, fetch, server.nets, shared, side)
    shared = shared._replace(nets=nets)
  hook = fed.method.broadcast
  if hook is not None:
    key = jax.random.fold_in(keys["broadcast"], round_idx)
    extra, info = hook.make(fed.ctx, shared.nets, probe, key, fed.broadcast_settings)
    shared = shared._replace(extra=extra)
    metrics.update(info)
  return shared, metrics


def conclude(fed: Federation, fetch, server, shared, part, metrics, side: ServerSide):
  """:func:`finish` with the server's training where it follows the broadcast
  (``with_clients``, ``after_clients``)."""
  where = _server_training(fed)
  if where == "with_clients":  # its update joins the clients' sums (aggregator mean)
    nets, info = server_train(fed, fetch, shared.nets, shared, side)
    weight = jnp.asarray(side.n, jnp.float32)
    delta = jax.tree.map(
      lambda a, b: a.astype(jnp.float32) - b.astype(jnp.float32),
      params_of(nets),
      params_of(shared.nets),
    )
    joined = {"delta": delta, "batch_stats": stats_of(nets)}  # (not with FedBN: checks.py)
    summed = part.summed
    sums = {k: summed[k] for k in joined}
    added = jax.tree.map(lambda s, x: s + weight * x.astype(jnp.float32), sums, joined)
    part = part._replace(summed={**summed, **added, "weight": summed["weight"] + weight})
    metrics = {**metrics, **info}
  new, metrics = aggregation.finish(fed, server, shared, part, metrics)
  if where == "after_clients":
    nets, info = server_train(fed, fetch, new.nets, shared, side)
    new, metrics = new.replace(nets=nets), {**metrics, **info}
  return new, metrics


def local_rows(server: ServerState, rows) -> dict:
  """What the clients ``rows`` keep (padding rows: the last client's, unused)."""
  return jax.tree.map(lambda x: jnp.take(x, rows, axis=0, mode="clip"), server.clients)


class Inputs(NamedTuple):
  """What one round reads besides the server state: the index tables ``data``; ``ids``,
  the client rows that train (:func:`jaxseg.fed.recipe.sample`; None: every row), whose
  batches (or their indices) ``client_xs`` are; the server's ``server_xs``; the seed
  search's ``probe``; the server's and the client groups' training arrays."""

  data: streams.ClientData
  ids: Any
  client_xs: Any
  server_xs: Any
  probe: Any
  server_arrays: Any = None
  client_arrays: Any = None


def round_(
  fed: Federation,
  server: ServerState,
  inputs: Inputs,
  fetch: Callable,
  keys: dict,
  map_clients: Callable = lambda clients, shared, arrays, block: clients(shared, arrays, block),
):
  """One round: ``(new server state, metrics)``. ``keys``: ``train``, ``broadcast``,
  ``recipe``.

  ``fetch(arrays, x, key)`` makes one step's batches from its ``xs`` entry, out of the
  server's ``server_arrays`` or a client group's ``client_arrays`` (see the module
  docstring). ``map_clients(clients, shared, arrays, block)`` runs :func:`clients`:
  directly, or per device on its shard of the client groups with the sums combined by
  ``psum`` (:func:`jaxseg.fed.backends.vmap_round`).
  """
  data, ids = inputs.data, inputs.ids
  side = ServerSide(inputs.server_xs, inputs.server_arrays, data.server_n)
  shared, metrics = broadcast(fed, fetch, server, side, inputs.probe, keys)
  rows = jnp.arange(data.size.shape[0]) if ids is None else ids
  sub = streams.rows_of(data, ids)
  block = Block(rows, inputs.client_xs, sub.steps, sub.size, local_rows(server, rows))
  part = map_clients(functools.partial(clients, fed, fetch), shared, inputs.client_arrays, block)
  return conclude(fed, fetch, server, shared, part, metrics, side)
