"""The server of a Flower federation (its ServerApp's work, :mod:`jaxseg.flower.app`):
the handshake with the sites (:func:`connect`), and the round as a
:class:`jaxseg.run.federated.Simulation` (:func:`federation`): which sites train
(:func:`sampler`), what they are sent, and their answers added in their numbers'
order, refused where not finite, missing sites named (:func:`_report`)."""

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from jaxseg.errors import UserError
from jaxseg.fed import aggregation, backends, cost, layout, recipe, simulate
from jaxseg.flower import wire
from jaxseg.run import federated, skeleton, volume
from jaxseg.run.experiment import Experiment


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
  encoded = wire.encode_config(cfg)
  sites = connect(grid, exp, encoded)
  placed, width, longest, table = _server_side(exp, sites)
  fed, parts = placed.fed, backends.loop_parts(placed)
  run = hashlib.sha256(f"{encoded}:{os.path.abspath(workdir)}".encode()).hexdigest()[:16]
  names = {n: s["name"] for n, s in sites.items()}
  number = {n: c for c, n in enumerate(sites)}
  draw = sampler(recipe.of(cfg), placed.keys["recipe"], sites)
  compressed = fed.recipe.compress != "none"
  restore = jax.jit(functools.partial(wire.restored, fed.recipe)) if compressed else None

  def run_round(state):
    _, client_xs, server_xs, (shared, metrics) = parts.prepare(
      state, placed.data, placed.server_arrays, placed.probe, None
    )
    like = _reply_shape(parts, placed, state, shared, client_xs)
    round_ = int(state.step)
    down = {"nets": wire.to_record(shared.nets)}
    recipe_state = {k: float(v) for k, v in jax.device_get(shared.recipe_state).items()}
    if shared.extra is not None:
      down["extra"] = ArrayRecord({"payload": Array(np.asarray(shared.extra))})

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
    unsent = wire.unsent_keys(fed.recipe, shared.nets)
    total = _aggregate(parts, like, replies, number, names, restore, unsent)
    # The sites keep their own state; the server's copy of it is left as it is.
    total = total._replace(local=simulate.local_rows(state, total.stacked["row"]))
    side = simulate.ServerSide(server_xs, placed.server_arrays, placed.data.server_n)
    state, metrics = parts.conclude(state, shared, total, metrics, side)
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
    return recipe.sample(rc, recipe.sample_key(key, round_), size)

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
  where = backends.Placement(reader=federated.reader(exp))
  placed = backends.place(fed, data, server_source, probe, exp.train_key, where)
  return placed, width, longest, table


def _reply_shape(parts, placed, state, shared, client_xs):
  """The shape of a site's contribution: the block on the server's (empty) client row."""
  local = simulate.local_rows(state, jnp.arange(1))
  block = simulate.Block(jnp.arange(1), client_xs, placed.data.steps, placed.data.size, local)
  return jax.eval_shape(parts.block, shared, placed.client_arrays, block)[:2]


def _measured(sent: Message, answer: Message, sites: int) -> dict:
  """What a round's messages carried: arrays (:func:`jaxseg.flower.wire.payload_bytes`)
  and on the wire."""
  return {
    "sites": sites,
    "down_bytes": wire.payload_bytes(sent.content),
    "up_bytes": wire.payload_bytes(answer.content),
    "down_wire_bytes": wire.wire_bytes(sent),
    "up_wire_bytes": wire.wire_bytes(answer),
  }


def _aggregate(parts, like, replies: dict, number: dict, names: dict, restore, unsent=frozenset()):
  """The sites' contributions added in the order of their numbers (as the simulation
  adds its clients); a contribution with a non-finite value is refused (named in the
  log), never added; a compressed one is read back first (``restore``, compiled once:
  :func:`jaxseg.flower.wire.restored`; None without compression); what the sites keep
  is not sent (``local`` None)."""
  total = None
  for node in sorted(replies, key=number.get):
    part = jax.tree.map(jnp.asarray, wire.from_record(replies[node].content["part"], like, unsent))
    if not all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(part)):
      skeleton.say(f"site {names[node]}: its update has non-finite values; refused.")
      continue
    part = aggregation.Part(*(part if restore is None else restore(part)), local=None)
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
