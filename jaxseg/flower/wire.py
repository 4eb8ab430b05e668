"""What crosses the wire between the server and a site, as Flower records: the run's
config as one word, parameter trees as ``ArrayRecord`` s keyed by their paths, what a
site keeps back (FedBN's BatchNorm) or sends instead of its update (its compressed
bytes, read back by :func:`restored`), and the bytes a message carries."""

import base64
import json
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from jaxseg.fed import aggregation, algorithms, compress

# A site's reply's update, by the record keys of its contribution (simulate.clients).
UPDATE = ("[0]['delta']", "[0]['batch_stats']", "[0]['dc']", "[1]['stacked']", "[1]['wire']")


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
  params, stats = aggregation.params_of(nets), aggregation.stats_of(nets)
  paths = jax.tree_util.tree_flatten_with_path(algorithms.bn_mask(params, stats))[0]
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
  (:func:`jaxseg.fed.aggregation.contributions`): the update zeroed where it was not
  accepted, then weighted (one site: its weight is the sum's)."""
  summed, stacked = part
  if rc.stacked:
    like = jax.tree.map(lambda x: x[0], stacked["stacked"])
  else:
    like = summed["delta"]
  decoded = jax.vmap(lambda w: compress.decompressed(rc, w, like))(stacked["wire"])
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
  return {**summed, "delta": aggregation.weighted_sum(clean, weight)}, stacked


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
