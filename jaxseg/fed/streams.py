"""Who holds what, and what each round reads: the federation's index tables
(:class:`ClientData`) and, per round, each participant's batch indices into the
training arrays (:func:`client_indices`, :func:`server_indices`: the same streams in
simulation and on a real site), then the batches themselves (:func:`gather`)."""

import functools

import jax
import jax.numpy as jnp
from flax import struct

from jaxseg.data import resident

SAMPLINGS = ("epochs", "replacement")
SERVER = 2**31 - 1  # the server's index where keys are folded per participant


class ClientData(struct.PyTreeNode):
  """Who holds what: index tables into the training arrays, padded per row.

  ``labeled``/``unlabeled`` ``[R, max]`` with counts ``[R]``; ``size [R]`` the
  aggregation weight (0 for padding rows); ``steps [R]`` local steps per client;
  ``server [max]`` with ``server_n`` the server's labeled images.
  """

  labeled: jax.Array
  labeled_n: jax.Array
  unlabeled: jax.Array
  unlabeled_n: jax.Array
  size: jax.Array
  steps: jax.Array
  server: jax.Array
  server_n: jax.Array


def stream_of(fed, data_key, round_, stream: tuple, table, count, shape, live):
  """A participant's indices ``shape`` ``(S, B)`` (static) into ``table[:count]`` for
  this round, of which it runs ``live`` steps. ``stream``: ``(participant, 0 labeled |
  1 unlabeled)``. ``fed.sampling``:

  * ``epochs`` (default): the participant's stream over ``table[:count]`` — epochs of
    seeded permutations, without replacement, batch after batch across rounds — by
    the rule of every centralized run (:mod:`jaxseg.data.resident`), round ``r``
    reading on from position ``r * live * B``;
  * ``replacement``: uniform draws with replacement, keyed by round, participant and
    step (how jaxseg sampled before; the tables of docs/federated.md say which they used).
  """
  (steps, batch), key = shape, data_key
  if fed.sampling == "replacement":
    key = jax.random.fold_in(key, round_)
  for k in stream:
    key = jax.random.fold_in(key, k)
  if fed.sampling == "replacement":
    keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(steps))
    picks = jax.vmap(lambda k: jax.random.randint(k, (batch,), 0, jnp.maximum(count, 1)))(keys)
    return table[picks]
  start = round_ * jnp.maximum(live, 1) * batch
  picks = resident.stream_indices(key, start, steps * batch, table.shape[0], count)
  return table[picks.reshape(steps, batch)]


def client_indices(fed, data: ClientData, data_key, round_, ids=None):
  """Per client ``{labeled, unlabeled}`` indices ``[R, S, B]`` of this round; ``ids``:
  the rows' client numbers (default ``0 .. R-1``; a real site holds one row)."""
  rows = jnp.arange(data.size.shape[0]) if ids is None else jnp.asarray(ids)
  stream = functools.partial(stream_of, fed, data_key, round_)
  s = fed.local_steps

  def one(c, live, lab, lab_n, unl, unl_n):
    out = {"unlabeled": stream((c, 1), unl, unl_n, (s, fed.unlabeled_batch_size), live)}
    if fed.scenario == "label_at_client":
      out["labeled"] = stream((c, 0), lab, lab_n, (s, fed.batch_size), live)
    return out

  return jax.vmap(one)(
    rows, data.steps, data.labeled, data.labeled_n, data.unlabeled, data.unlabeled_n
  )


def server_indices(fed, data: ClientData, data_key, round_):
  """The server's ``{labeled, unlabeled}`` indices ``[S, B]`` (label-at-server)."""
  stream = functools.partial(stream_of, fed, data_key, round_)
  server, n, s = data.server, data.server_n, fed.server_steps
  return {
    "labeled": stream((SERVER, 0), server, n, (s, fed.batch_size), s),
    "unlabeled": stream((SERVER, 1), server, n, (s, fed.unlabeled_batch_size), s),
  }


def gather(arrays: dict, indices, key=None) -> dict:
  """Batches of the training ``arrays`` at ``indices`` (any leading shape); ``key``
  unused (a volume run's fetch draws patch positions with it)."""
  del key
  return jax.tree.map(lambda idx: {k: v[idx] for k, v in arrays.items()}, indices)


def rows_of(data: ClientData, ids) -> ClientData:
  """The client rows ``ids`` of ``data`` (the server's table unchanged)."""
  if ids is None:
    return data
  take = lambda x: x[ids]  # noqa: E731
  return data.replace(
    **{
      f: take(getattr(data, f))
      for f in ("labeled", "labeled_n", "unlabeled", "unlabeled_n", "size", "steps")
    }
  )
