"""The server half of a federated round (pure): the clients' contributions, how two
blocks of them combine, the server update from their sums.

A block of clients (:func:`jaxseg.fed.simulate.clients`) reduces its clients' results
to a :class:`Part` (``summed``, ``stacked``: :func:`contributions`): sums weighted by
the recipe's weights (:func:`jaxseg.fed.recipe.weights`), a client whose update is not
finite weighing 0; blocks on several devices combine by ``psum``, blocks run one after
another by :func:`add`. :func:`finish` turns the total into the new server state (DP's noise, the
recipe's aggregate, the server optimizer, the BatchNorm statistics' weighted mean).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxseg.fed import privacy
from jaxseg.fed import recipe as recipe_lib


def params_of(nets: dict) -> dict:
  return {n: v.params for n, v in nets.items()}


def stats_of(nets: dict) -> dict:
  return {n: v.batch_stats for n, v in nets.items()}


def weighted_sum(tree, weights):
  """``sum_c weights[c] * tree[c]`` over the leading (client) axis, in float32."""
  return jax.tree.map(lambda x: jnp.tensordot(weights, x.astype(jnp.float32), axes=1), tree)


def aggregate(fed, server, part, key):
  """The server update of ``server`` (:class:`jaxseg.fed.simulate.ServerState`) from the
  clients' contributions ``part`` (:func:`jaxseg.fed.simulate.clients`):
  DP's noise, the aggregate update, the server optimizer; the BatchNorm statistics'
  weighted mean (kept where no client was accepted)."""
  summed, stacked = part
  params = params_of(server.nets)
  noisy, state = privacy.server_noise(fed.recipe, {**summed, **stacked}, server.recipe, key)
  mean = recipe_lib.mean_of(fed.recipe, noisy)
  pseudo_grad = jax.tree.map(lambda m, p: (-m).astype(p.dtype), mean, params)
  updates, opt_state = fed.server_tx.update(pseudo_grad, server.opt_state, params)
  params = optax.apply_updates(params, updates)
  weight = summed["weight"]
  stats = stats_of(server.nets)  # FedBN: the statistics stay with the sites
  if "batch_stats" in summed:
    stats = jax.tree.map(
      lambda s, old: jnp.where(weight > 0, s / jnp.maximum(weight, 1e-12), old).astype(old.dtype),
      summed["batch_stats"],
      stats,
    )
  if "dc" in summed:  # SCAFFOLD: c <- c + (1/N) sum of the clients' c_i+ - c_i
    n = fed.recipe.num_clients
    state = {**state, "c": jax.tree.map(lambda c, d: c + d / n, state["c"], summed["dc"])}
  nets = {n: v.replace(params=params[n], batch_stats=stats[n]) for n, v in server.nets.items()}
  return server.replace(nets=nets, opt_state=opt_state, recipe=state)


class Results(NamedTuple):
  """A block's clients' results, stacked: their updates ``delta``, BatchNorm ``stats``,
  training ``metrics`` and the recipe's per-client ``info`` (SCAFFOLD's ``dc``,
  adaptive clipping's count)."""

  delta: Any
  stats: Any
  metrics: dict
  info: dict


class Part(NamedTuple):
  """A block of clients' part of a round (:func:`jaxseg.fed.simulate.clients`):
  ``summed`` adds over clients (blocks on several devices ``psum`` it), ``stacked`` has
  a row per client (blocks concatenate), ``local`` is what each client keeps
  (FedBN's BatchNorm, SCAFFOLD's ``c_i``: never sent)."""

  summed: dict
  stacked: dict
  local: Any


def contributions(rc, rows, size, results: Results) -> tuple[dict, dict]:
  """A block's ``(summed, stacked)`` from its clients' ``results`` (see
  :func:`jaxseg.fed.simulate.clients`): a client whose update or statistics are not
  finite is rejected (weight 0)."""
  delta, stats, metrics, info = results
  live = size > 0
  ok = jax.vmap(lambda d, s: recipe_lib.finite(d) & recipe_lib.finite(s))(delta, stats)
  accepted = live & ok
  clean = lambda tree: jax.tree.map(  # noqa: E731
    lambda x: jnp.where(accepted.reshape(-1, *([1] * (x.ndim - 1))), x, 0.0), tree
  )
  delta, stats = clean(delta), clean(stats)
  weights = recipe_lib.weights(rc, size) * accepted
  counted = accepted.astype(jnp.float32)
  summed = {
    "weight": weights.sum(),
    "live": counted.sum(),
    "metrics": {k: jnp.dot(counted, jnp.where(accepted, v, 0.0)) for k, v in metrics.items()},
    **{k: weighted_sum(v, counted) for k, v in clean(info).items()},
  }
  if rc.algorithm != "fedbn":
    summed["batch_stats"] = weighted_sum(stats, weights)
  stacked = {"rejected": jnp.where(live & ~ok, rows, -1).astype(jnp.int32), "row": rows}
  if rc.stacked:
    stacked.update(stacked=delta, accepted=accepted)
  else:
    summed["delta"] = weighted_sum(delta, weights)
  return summed, stacked


def add(a: Part, b: Part) -> Part:
  """Two blocks' parts combined: sums added, rows (stacked, kept) concatenated."""
  rows = lambda x, y: jnp.concatenate([x, y])  # noqa: E731
  return Part(
    jax.tree.map(jnp.add, a.summed, b.summed),
    jax.tree.map(rows, a.stacked, b.stacked),
    jax.tree.map(rows, a.local, b.local),
  )


def finish(fed, server, shared, part: Part, metrics: dict):
  """Step 5 of a round: the new server state and the round's metrics (``rejected``:
  per trained row, the client whose update was refused, or -1)."""
  summed, stacked, local = part
  live = jnp.maximum(summed["live"], 1)
  metrics = {**metrics, **{k: v / live for k, v in summed["metrics"].items()}}
  metrics["rejected"] = stacked["rejected"]
  if fed.recipe.dp:
    metrics["clip_norm"] = server.recipe["clip_norm"]
  key = jax.random.fold_in(shared.recipe_key, recipe_lib.NOISE_KEY)
  server = aggregate(fed, server.replace(nets=shared.nets), (summed, stacked), key)
  # What the trained clients keep (padding rows, numbered from N on, are dropped).
  kept = jax.tree.map(
    lambda store, new: store.at[stacked["row"]].set(new, mode="drop"), server.clients, local
  )
  return server.replace(step=server.step + 1, clients=kept), metrics
