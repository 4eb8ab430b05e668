"""A real federation over Flower (``pip install -e '.[flower]'``): the federated round
of :mod:`jaxseg.run.federated`, with each client a *site* — a Flower SuperNode that
reads only its own folder — and the server a Flower ServerApp.

The round is the simulation's ``loop`` backend cut at its seams
(:class:`jaxseg.fed.backends.LoopParts`): the server runs ``prepare`` (its training,
label-at-server; the method's hook, FedWeP's seed search), sends the exchanged
networks (and the hook's payload, FedWeP's two seeds) to every site, adds the sites'
answers in the order of their names and runs ``conclude`` (the server optimizer,
FedAvg or FedAdam); each site runs ``block``, the simulation's compiled client
function, on its own images. What crosses the wire, per round and site:

* down: the exchanged networks' parameters and BatchNorm statistics, the payload, and a
  ConfigRecord with the run's config and the site's place (its number, the federation's
  table width and longest local run: counts);
* up: the site's networks times its image count (float32 sums, as the simulation adds
  clients), that count, and the sums of its training metrics; with compression the
  update's compressed bytes instead (:func:`restored` reads them back).

A site's number is its place among the sites' names (sorted): a site holding what
client ``k`` of a simulation holds (``config.fed.client_dirs``, the same folders)
trains exactly as that client, so N rounds end with the simulation's global model,
bitwise on one platform (tests/test_flower.py). A site labels ``ceil(fraction *
images)`` of its images (its own ``labeled-fraction``, else
``config.method.labeled_fraction``); the simulation apportions the global count, which
is the same where the sites' shares are whole numbers.

Sites are SuperNodes started with ``--node-config "data-dir='DIR' site='NAME'
[labeled-fraction=F] [cache-dir='DIR']"``; the server's own data (validation, test,
and label-at-server its labeled images: its whole training split) is
``config.data.dir`` on the server. A round ends when every site has answered, or after
``config.fed.round_timeout_s`` with at least ``config.fed.min_fraction`` of them (the
log names the missing); a site whose data cannot be read answers with its one-line
error, which the server reports. The ServerApp writes the workdir a simulation writes
(``config.json``, ``metrics.jsonl`` with the measured bytes, checkpoints of the global
model each validation, ``communication.json``; a restarted run resumes), so ``jaxseg
eval`` works on it. Volume sites hold ``msd`` folders and prepare their cases as the
server's plan says (its spacing and CT statistics, sent with every message).
"""

import base64
import dataclasses
import functools
import hashlib
import itertools
import json
import logging as std_logging
import math
import os
import sys
import time
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import serialization
from flwr.app import (
  Array,
  ArrayRecord,
  ConfigRecord,
  Context,
  Error,
  Message,
  RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from jaxseg import data as datasets
from jaxseg.errors import UserError
from jaxseg.fed import backends, cost, layout, recipe, simulate
from jaxseg.run import federated, runtime, skeleton, volume
from jaxseg.run.experiment import Experiment

server_app = ServerApp()
client_app = ClientApp()
std_logging.getLogger("absl").addFilter(runtime.quiet)  # TFDS's and orbax's notices
USER_ERROR = 0  # the Error code a site answers a user error (its data) with
# A site's reply's update, by the record keys of its contribution (simulate.clients).
UPDATE = ("[0]['delta']", "[0]['batch_stats']", "[0]['dc']", "[1]['stacked']", "[1]['wire']")
RECIPE_STATE = ("clip_norm",)  # the recipe's state a site needs (jaxseg.fed.recipe.init)


def encode_config(config: ml_collections.ConfigDict) -> str:
  """``config`` as one ASCII word (base64 of its compressed JSON): Flower's run config
  takes it, and it travels with every round (a site that restarts can rejoin)."""
  return base64.b64encode(zlib.compress(config.to_json_best_effort().encode(), 9)).decode()


def decode_config(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(zlib.decompress(base64.b64decode(text))))


def to_record(tree) -> ArrayRecord:
  """The leaves of ``tree`` by path (``['model'].params['conv0']…``)."""
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
  return ArrayRecord({jax.tree_util.keystr(p): Array(np.asarray(v)) for p, v in leaves})


def from_record(record: ArrayRecord, like, unsent=frozenset()):
  """The tree ``like`` (its structure) with the leaves of ``record``; the keys in
  ``unsent`` (what a site keeps: :func:`unsent_keys`) are zeros of ``like``'s shape."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(like)

  def leaf(path, x):
    key = jax.tree_util.keystr(path)
    return np.zeros(x.shape, x.dtype) if key in unsent else record[key].numpy()

  return jax.tree.unflatten(treedef, [leaf(p, x) for p, x in paths])


def unsent_keys(rc, nets) -> frozenset:
  """The record keys of a site's update that it does not send: FedBN's BatchNorm
  parameters (their update is zero; the site keeps them) and, with compression, the
  update itself (its compressed bytes, ``[1]['wire']``, travel instead: the server
  reads it back, :func:`restored`)."""
  params, stats = simulate.params_of(nets), simulate.stats_of(nets)
  paths = jax.tree_util.tree_flatten_with_path(recipe.bn_mask(params, stats))[0]
  paths = [(jax.tree_util.keystr(p), kept) for p, kept in paths]
  bn = [p for p, kept in paths if kept] if rc.algorithm == "fedbn" else []
  values = "[1]['stacked']" if rc.stacked else "[0]['delta']"
  if rc.compress == "none":
    return frozenset(values + p for p in bn)
  fields = ("level", "lo", "step") if rc.compress == "q8" else ("values", "index")
  wire = [f"[1]['wire']['{f}']{p}" for f in fields for p in bn]
  return frozenset([values + p for p, _ in paths] + wire)


def restored(rc, part):
  """A site's contribution with its update read back from the compressed bytes it
  sent (``wire``), computed as the site's block computed it
  (:func:`jaxseg.fed.simulate.contributions`): the update zeroed where it was not
  accepted, then weighted (one site: its weight is the sum's)."""
  summed, stacked = part
  if rc.stacked:
    like = jax.tree.map(lambda x: x[0], stacked["stacked"])
  else:
    like = summed["delta"]
  decoded = jax.vmap(lambda w: recipe.decompressed(rc, w, like))(stacked["wire"])
  if rc.stacked:
    keep = stacked["accepted"]
    clean = jax.tree.map(
      lambda x: jnp.where(keep.reshape(-1, *([1] * (x.ndim - 1))), x, 0.0), decoded
    )
    return summed, {**stacked, "stacked": clean}
  weight = summed["weight"][None]
  clean = jax.tree.map(
    lambda x: jnp.where(weight.reshape(-1, *([1] * (x.ndim - 1))) > 0, x, 0.0), decoded
  )
  return {**summed, "delta": simulate.weighted_sum(clean, weight)}, stacked


def payload_bytes(content: RecordDict) -> int:
  """Bytes of the arrays a message carries (what :mod:`jaxseg.fed.cost` predicts); of a
  site's reply, those of its update (the networks' change and BatchNorm statistics, not
  the few counts beside them)."""
  arrays = [(k, a) for r in content.array_records.values() for k, a in r.items()]
  if "part" in content:
    arrays = [(k, a) for k, a in arrays if k.startswith(UPDATE)]
  return sum(a.numpy().nbytes for _, a in arrays)


def wire_bytes(message: Message) -> int:
  """Bytes of the message's serialized objects: what Flower sends, before HTTP. Flower
  addresses objects by content, so equal arrays (e.g. zero-initialised biases) travel
  once and this can be below :func:`payload_bytes`; the difference otherwise is
  Flower's framing (array metadata, records) and the plan (the compressed config)."""
  return sum(len(o.deflate()) for o in get_all_nested_objects(message).values())


# --- the site (ClientApp) -------------------------------------------------------------


@dataclasses.dataclass
class Site:
  """A site's experiment (the server's config reading the site's folder) and images,
  opened for every message: Flower runs each message in a new process (the compiled
  round then comes from the persistent compilation cache)."""

  exp: Experiment
  source: object
  images: int
  pool: int
  fraction: float
  name: str


def open_site(context: Context, config: ml_collections.ConfigDict, plan: dict | None) -> Site:
  """The site's experiment and data; ``plan``: how the server prepares volumes (its
  spacing and CT statistics, which the site's cases follow), None for images."""
  node = context.node_config
  if "data-dir" not in node:
    raise UserError("this SuperNode has no data: start it with --node-config \"data-dir='DIR'\".")
  with config.unlocked():  # the server's paths mean nothing here
    config.data = federated.site_config(config.data, str(node["data-dir"]))
    config.data.cache_dir = str(node.get("cache-dir", datasets.default_cache_dir()))
    for key in ("unlabeled_dir", "extra_train_dir"):
      if key in config.data:
        config.data[key] = ""
  compilation_cache(config.data.cache_dir)
  exp = Experiment(config, splits=(), plan=plan)
  source, images, pool = federated.site_data(exp, config.data.dir, plan)
  fraction = float(node.get("labeled-fraction", config.method.labeled_fraction))
  return Site(exp, source, images, pool, fraction, site_name(context))


def compilation_cache(cache_dir: str) -> None:
  """Compiled programs kept in ``cache_dir/jax_cache``: Flower starts a process per
  message, which would otherwise compile the round again every time."""
  if not jax.config.jax_compilation_cache_dir:  # a cache the user set is kept
    jax.config.update("jax_compilation_cache_dir", f"{cache_dir}/jax_cache")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def site_name(context: Context) -> str:
  return str(context.node_config.get("site", context.node_id))


def _answer(message: Message, context: Context, work) -> Message:
  """``work(site, plan)``'s reply; a user error (unreadable or mismatched data) is one
  line on the site and the reply's error."""
  plan = message.content["plan"]
  volumes = json.loads(str(plan["volumes"])) if "volumes" in plan else None
  try:
    site = open_site(context, decode_config(plan["config"]), volumes)
    return Message(work(site, plan), reply_to=message)
  except UserError as e:
    print(f"jaxseg site {site_name(context)}: error: {e}", file=sys.stderr, flush=True)
    return Message(Error(code=USER_ERROR, reason=str(e)), reply_to=message)


@client_app.query()
def _query(message: Message, context: Context) -> Message:
  """The handshake: the site's counts (its data prepared and checked)."""

  def counts(site: Site, plan) -> RecordDict:
    found = {"images": site.images, "pool": site.pool, "fraction": site.fraction}
    return RecordDict({"site": ConfigRecord({"name": site_name(context), **found})})

  return _answer(message, context, counts)


@client_app.train()
def _train(message: Message, context: Context) -> Message:
  """One round of local training: the simulation's client function on this site."""
  return _answer(message, context, lambda site, plan: local_round(site, plan, message.content))


def local_round(site: Site, plan: ConfigRecord, content: RecordDict) -> RecordDict:
  exp, fc = site.exp, site.exp.config.fed
  client, round_ = int(plan["client"]), int(plan["round"])
  where = layout.site(fc.scenario, site.images, site.pool, site.fraction, client, exp.config.seed)
  data, _ = layout.client_data(
    where,
    1,
    fc.local_steps,
    fc.local_epochs,
    exp.config.train.batch_size,
    exp.config.method.unlabeled_batch_size,
    width=int(plan["width"]),
  )
  fed = federated.federation(exp, int(plan["longest"]))
  placed = backends.place(
    fed, data, site.source, np.zeros((1,), np.float32), exp.train_key, "device",
    jax.devices()[:1], 1, federated.reader(exp),
  )  # fmt: skip
  nets = from_record(content["nets"], exp.abstract_state().nets)
  extra = content["extra"]["payload"].numpy() if "extra" in content else None
  row = jnp.arange(client, client + 1)
  draw = jax.jit(lambda d, k, r: simulate.client_indices(fed, d, k, r, row))
  xs = draw(placed.data, placed.data_key, round_)
  state = {k: jnp.asarray(np.float32(v)) for k, v in content["plan"].items() if k in RECIPE_STATE}
  shared = {
    "nets": nets,
    "extra": extra,
    "key": jax.random.fold_in(placed.keys["train"], round_),
    "round": jnp.int32(round_),
    "recipe": {"state": state, "key": jax.random.fold_in(placed.keys["recipe"], round_)},
  }
  block = backends.loop_parts(placed).block
  kept = Kept(site, str(plan["run"]), fed.recipe, nets)
  summed, stacked, local = block(
    shared, placed.client_arrays, row, xs, placed.data.steps, placed.data.size, kept.load()
  )
  kept.save(local)  # FedBN's BatchNorm, SCAFFOLD's c_i: never sent
  record = to_record((summed, stacked))
  for key in unsent_keys(fed.recipe, nets):
    del record[key]
  return RecordDict({"part": record})


@dataclasses.dataclass
class Kept:
  """What a site keeps between rounds (:func:`jaxseg.fed.recipe.local_init`), in its
  cache folder, one file per run and site, replaced atomically."""

  site: Site
  run: str
  recipe: object
  nets: dict

  @property
  def path(self) -> str:
    name = f"{self.site.exp.config.fed.algorithm}_{self.run}_{self.site.name}.msgpack"
    return os.path.join(self.site.exp.config.data.cache_dir, "sites", name)

  def _initial(self) -> dict:
    params, stats = simulate.params_of(self.nets), simulate.stats_of(self.nets)
    return jax.tree.map(lambda x: x[None], recipe.local_init(self.recipe, params, stats))

  def load(self) -> dict:
    initial = self._initial()
    if not initial or not os.path.exists(self.path):
      return initial
    with open(self.path, "rb") as f:
      return serialization.from_bytes(initial, f.read())

  def save(self, local: dict) -> None:
    if not local:
      return
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    with open(self.path + ".tmp", "wb") as f:
      f.write(serialization.to_bytes(jax.device_get(local)))
    os.replace(self.path + ".tmp", self.path)


# --- the server (ServerApp) -----------------------------------------------------------


@server_app.main()
def _server(grid: Grid, context: Context) -> None:
  """``federated.train`` with the Flower round; a user error is one line."""
  config = decode_config(str(context.run_config["config"]))
  workdir = str(context.run_config["workdir"])
  compilation_cache(config.data.cache_dir or datasets.default_cache_dir())
  try:
    federated.train(config, workdir, make_simulation=lambda exp: federation(exp, grid, workdir))
  except UserError as e:
    print(f"jaxseg: error: {e}", file=sys.stderr, flush=True)
    skeleton.write_text(workdir, "flower_error.txt", f"{e}\n")


def _send(grid: Grid, sites: dict, kind: str, content, timeout: float) -> tuple[dict, dict]:
  """``content(node)`` to every node of ``sites``: ``(replies, errors)`` by node. Waits
  until every node has answered, ``timeout`` seconds have passed, or the nodes still
  awaited have left the federation (Flower's ``send_and_receive`` polls every 3 s and
  waits for nodes that are gone); polls every 0.5 s."""
  messages = [Message(content(n), dst_node_id=n, message_type=kind) for n in sites]
  pending = dict(zip(grid.push_messages(messages), sites, strict=True))  # message -> node
  replies, errors, start = {}, {}, time.time()
  for poll in itertools.count():
    for reply in grid.pull_messages(list(pending)):
      node = pending.pop(reply.metadata.reply_to_message_id)
      if reply.has_error():
        errors[node] = reply.error.reason
      else:
        replies[node] = reply
    if not pending or time.time() > start + timeout:
      break
    # Every 5 s: are the awaited sites still connected? (each poll costs the SuperLink)
    if poll % 10 == 9 and not set(pending.values()) & set(grid.get_node_ids()):
      break
    time.sleep(0.5)
  return replies, errors


def connect(grid: Grid, exp: Experiment, encoded: str) -> dict:
  """``{node: site counts}`` of ``config.fed.num_clients`` sites, sorted by name (the
  handshake; a site's error stops the run naming the site)."""
  fc, deadline = exp.config.fed, time.time() + exp.config.fed.round_timeout_s
  while len(nodes := sorted(grid.get_node_ids())) != fc.num_clients:
    if len(nodes) > fc.num_clients:
      raise UserError(
        f"{len(nodes)} sites are connected, config.fed.num_clients={fc.num_clients}: "
        "set it to the number of sites."
      )
    if time.time() > deadline:
      raise UserError(
        f"{len(nodes)} of config.fed.num_clients={fc.num_clients} sites connected within "
        f"config.fed.round_timeout_s={fc.round_timeout_s:g} s."
      )
    time.sleep(0.5)
  plan = lambda n: RecordDict({"plan": ConfigRecord(site_plan(exp, encoded))})  # noqa: E731
  replies, errors = _send(grid, dict.fromkeys(nodes), "query", plan, fc.round_timeout_s)
  if errors:
    raise UserError("; ".join(f"site node {n}: {reason}" for n, reason in errors.items()))
  found = {n: dict(r.content["site"]) for n, r in replies.items()}
  if len(found) < fc.num_clients:
    raise UserError(f"only {len(found)} of {fc.num_clients} sites answered the handshake.")
  return dict(sorted(found.items(), key=lambda item: item[1]["name"]))


def site_plan(exp: Experiment, encoded: str) -> dict:
  """What every message tells a site: the run's config and, for volumes, how the server
  prepares cases (:func:`jaxseg.run.volume.site_config`)."""
  if exp.volumes is None:
    return {"config": encoded}
  return {"config": encoded, "volumes": json.dumps(exp.volumes.plan)}


def plan_sites(exp: Experiment, sites: dict, server_images: int) -> tuple[int, int, str]:
  """``(width, longest, table)``: the federation's table width, longest local run, and
  the sites' table (``clients.md``), from the sites' counts."""
  cfg, fc = exp.config, exp.config.fed
  width = sum(s["images"] + s["pool"] for s in sites.values()) + server_images
  lines = ["| client | site | images | labeled | without masks | local steps |", "|---" * 6 + "|"]
  longest = 0
  for c, s in enumerate(sites.values()):
    where = layout.site(fc.scenario, s["images"], s["pool"], s["fraction"], c, cfg.seed)
    _, steps = layout.client_data(
      where, 1, fc.local_steps, fc.local_epochs, cfg.train.batch_size,
      cfg.method.unlabeled_batch_size, width,
    )  # fmt: skip
    longest = max(longest, steps)
    lines.append(
      f"| {c} | {s['name']} | {s['images']} | {len(where.labeled[0])} | {s['pool']} | {steps} |"
    )
  return width, longest, "\n".join(lines)


def federation(exp: Experiment, grid: Grid, workdir: str) -> federated.Simulation:
  """The Flower round as a :class:`jaxseg.run.federated.Simulation` (``workdir``'s
  path names the run for the state the sites keep)."""
  cfg, fc = exp.config, exp.config.fed
  encoded = encode_config(cfg)
  sites = connect(grid, exp, encoded)
  placed, width, longest, table = _server_side(exp, sites)
  fed, parts = placed.fed, backends.loop_parts(placed)
  run = hashlib.sha256(f"{encoded}:{os.path.abspath(workdir)}".encode()).hexdigest()[:16]
  names = {n: s["name"] for n, s in sites.items()}
  number = {n: c for c, n in enumerate(sites)}
  draw = sampler(recipe.of(cfg), placed.keys["recipe"], sites)

  def run_round(state):
    _, client_xs, server_xs, (shared, metrics) = parts.prepare(
      state, placed.data, placed.server_arrays, placed.probe, None
    )
    like = _reply_shape(parts, placed, state, shared, client_xs)
    round_ = int(state.step)
    down = {"nets": to_record(shared["nets"])}
    recipe_state = {k: float(v) for k, v in jax.device_get(shared["recipe"]["state"]).items()}
    if shared["extra"] is not None:
      down["extra"] = ArrayRecord({"payload": Array(np.asarray(shared["extra"]))})

    def content(node):
      plan = {**site_plan(exp, encoded), **recipe_state, "round": round_, "client": number[node]}
      plan["run"] = run
      return RecordDict(
        {**down, "plan": ConfigRecord({**plan, "width": width, "longest": longest})}
      )

    chosen = draw(round_)
    live = [n for n in chosen if n in set(grid.get_node_ids())]
    replies, errors = _send(grid, dict.fromkeys(live), "train", content, fc.round_timeout_s)
    missing = [names[n] for n in chosen if n not in replies]
    _report(round_, missing, errors, names, len(chosen), fc.min_fraction)
    unsent = unsent_keys(fed.recipe, shared["nets"])
    summed, stacked = _aggregate(parts, like, replies, number, names, fed.recipe, unsent)
    # The sites keep their own state; the server's copy of it is left as it is.
    total = (summed, stacked, simulate.local_rows(state, stacked["row"]))
    state, metrics = parts.conclude(
      state, shared, total, metrics, (server_xs, placed.server_arrays, placed.data.server_n)
    )
    sent = Message(content(live[0]), dst_node_id=live[0], message_type="train")
    return state, {**metrics, **_measured(sent, next(iter(replies.values())), len(replies))}

  comm = cost.communication(exp.method, exp.abstract_state().nets, fed.recipe)
  state_sharding = jax.sharding.NamedSharding(placed.mesh, jax.sharding.PartitionSpec())
  return federated.Simulation(fed, None, table, comm, "flower", run_round, state_sharding)


def sampler(rc: recipe.Recipe, key, sites: dict):
  """``draw(round) -> [node]``: the sites that train the round, in their numbers'
  order — every site, or ``clients_per_round`` K of them drawn as the simulation draws
  its K rows (:func:`jaxseg.fed.backends.indices`: the round's recipe key, each site's
  size its images and pool, as :func:`jaxseg.fed.layout.site` counts them)."""
  nodes = list(sites)
  if not rc.clients_per_round:
    return lambda round_: nodes
  size = jnp.asarray([s["images"] + s["pool"] for s in sites.values()], jnp.float32)

  @jax.jit
  def ids(round_):
    return recipe.sample(
      rc, jax.random.fold_in(jax.random.fold_in(key, round_), recipe.SAMPLE_KEY), size
    )

  return lambda round_: [nodes[int(c)] for c in np.asarray(ids(round_))]


def _server_side(exp: Experiment, sites: dict):
  """``(placed, width, longest, table)``: the server's part of the round on its own
  images (label-at-server: its whole training split; it holds no client of its own)
  and the sites' plan (:func:`plan_sites`)."""
  if exp.volumes is None:
    server_source = exp.sources["train"]
  else:
    server_source = volume.Cases(exp.volumes.cases("train"), exp.volumes.patch)
  server_images = len(server_source) if exp.config.fed.scenario == "label_at_server" else 0
  width, longest, table = plan_sites(exp, sites, server_images)
  server = layout.Layout([np.zeros(0, np.int64)], [], [], np.arange(server_images))
  data, _ = layout.client_data(server, 1, 0, 0.0, 1, 1, width)
  fed = federated.federation(exp, longest)
  # The server draws the sites itself (:func:`sampler`), not rows of its own table.
  fed = dataclasses.replace(fed, recipe=dataclasses.replace(fed.recipe, clients_per_round=0))
  probe = federated.probe_images(exp, server_source, np.arange(max(server_images, 1)))
  placed = backends.place(
    fed, data, server_source, probe, exp.train_key, "device", jax.devices()[:1], 1,
    federated.reader(exp),
  )  # fmt: skip
  return placed, width, longest, table


def _reply_shape(parts, placed, state, shared, client_xs):
  """The shape of a site's contribution: the block on the server's (empty) client row."""
  args = (placed.client_arrays, jnp.arange(1), client_xs, placed.data.steps, placed.data.size)
  local = simulate.local_rows(state, jnp.arange(1))
  return jax.eval_shape(parts.block, shared, *args, local)[:2]


def _measured(sent: Message, answer: Message, sites: int) -> dict:
  """What a round's messages carried: arrays (:func:`payload_bytes`) and on the wire."""
  return {
    "sites": sites,
    "down_bytes": payload_bytes(sent.content),
    "up_bytes": payload_bytes(answer.content),
    "down_wire_bytes": wire_bytes(sent),
    "up_wire_bytes": wire_bytes(answer),
  }


def _aggregate(parts, like, replies: dict, number: dict, names: dict, rc, unsent=frozenset()):
  """The sites' contributions added in the order of their numbers (as the simulation
  adds its clients); a contribution with a non-finite value is refused (named in the
  log), never added; a compressed one is read back first (:func:`restored`)."""
  total, restore = None, jax.jit(functools.partial(restored, rc))
  for node in sorted(replies, key=number.get):
    part = jax.tree.map(jnp.asarray, from_record(replies[node].content["part"], like, unsent))
    if not all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(part)):
      skeleton.say(f"site {names[node]}: its update has non-finite values; refused.")
      continue
    part = restore(part) if rc.compress != "none" else part
    total = part if total is None else parts.add(total, part)
  if total is None:
    raise UserError("every site's update had non-finite values: none was aggregated.")
  return total


def _report(round_, missing, errors, names, count, min_fraction) -> None:
  """Says which sites were missing from round ``round_`` (and why, if they said);
  stops the run if fewer than ``min_fraction`` of them answered."""
  answered = count - len(missing)
  why = "; ".join(f"{names[n]}: {reason}" for n, reason in errors.items())
  if answered < max(1, math.ceil(min_fraction * count)):
    raise UserError(
      f"round {round_ + 1}: {answered} of {count} sites answered, fewer than "
      f"config.fed.min_fraction={min_fraction:g} (missing: {', '.join(missing)}"
      f"{'; ' + why if why else ''})."
    )
  if missing:
    skeleton.say(
      f"round {round_ + 1}: no update from {', '.join(missing)}"
      f"{' (' + why + ')' if why else ' (no answer in time)'}; aggregated {answered} of "
      f"{count} sites."
    )
