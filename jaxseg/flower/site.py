"""A site of a Flower federation (its ClientApp's work, :mod:`jaxseg.flower.app`): its
experiment on its own folder, one round of the simulation's client function on its
images (:func:`local_round`), and what it keeps between rounds on its disk
(:class:`Kept`: FedBN's BatchNorm, SCAFFOLD's ``c_i``)."""

import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import serialization
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict

from jaxseg import data as datasets
from jaxseg.errors import UserError
from jaxseg.fed import aggregation, backends, layout, recipe, simulate, streams
from jaxseg.flower import wire
from jaxseg.run import federated
from jaxseg.run.experiment import Experiment

USER_ERROR = 0  # the Error code a site answers a user error (its data) with
RECIPE_STATE = ("clip_norm",)  # the recipe's state a site needs (jaxseg.fed.recipe.init)


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


def answer(message: Message, context: Context, work) -> Message:
  """``work(site, plan)``'s reply; a user error (unreadable or mismatched data) is one
  line on the site and the reply's error."""
  plan = message.content["plan"]
  volumes = json.loads(str(plan["volumes"])) if "volumes" in plan else None
  try:
    site = open_site(context, wire.decode_config(plan["config"]), volumes)
    return Message(work(site, plan), reply_to=message)
  except UserError as e:
    print(f"jaxseg site {site_name(context)}: error: {e}", file=sys.stderr, flush=True)
    return Message(Error(code=USER_ERROR, reason=str(e)), reply_to=message)


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
  where = backends.Placement(reader=federated.reader(exp))
  placed = backends.place(fed, data, site.source, np.zeros((1,), np.float32), exp.train_key, where)
  nets = wire.from_record(content["nets"], exp.abstract_state().nets)
  extra = content["extra"]["payload"].numpy() if "extra" in content else None
  row = jnp.arange(client, client + 1)
  draw = jax.jit(lambda d, k, r: streams.client_indices(fed, d, k, r, row))
  xs = draw(placed.data, placed.keys["data"], round_)
  state = {k: jnp.asarray(np.float32(v)) for k, v in content["plan"].items() if k in RECIPE_STATE}
  shared = simulate.Shared(
    nets=nets,
    extra=extra,
    key=jax.random.fold_in(placed.keys["train"], round_),
    round=jnp.int32(round_),
    recipe_state=state,
    recipe_key=jax.random.fold_in(placed.keys["recipe"], round_),
  )
  block = backends.loop_parts(placed).block
  kept = Kept(site, str(plan["run"]), fed.recipe, nets)
  rows = simulate.Block(row, xs, placed.data.steps, placed.data.size, kept.load())
  part = block(shared, placed.client_arrays, rows)
  kept.save(part.local)  # FedBN's BatchNorm, SCAFFOLD's c_i: never sent
  record = wire.to_record((part.summed, part.stacked))
  for key in wire.unsent_keys(fed.recipe, nets):
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
    params, stats = aggregation.params_of(self.nets), aggregation.stats_of(self.nets)
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
