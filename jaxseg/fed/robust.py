"""Robust aggregation (``config.fed.aggregator``): coordinate-wise median, trimmed mean
and (Multi-)Krum over the clients' updates stacked ``[K, ...]``, rejected rows left
out. ``recipe``: a :class:`jaxseg.fed.recipe.Recipe` (its ``aggregator``, ``trim``,
``byzantine``, ``select``)."""

import jax
import jax.numpy as jnp


def krum_scores(flat, accepted, f: int) -> jax.Array:
  """Krum's score of each row of ``flat`` ``[K, D]``: the sum of its squared distances to
  its ``K' - f - 2`` nearest accepted neighbours (``K'`` accepted rows; Blanchard et al.
  2017, Eq. in Sec. 4); rejected rows score +inf."""
  k = flat.shape[0]
  sq = jnp.sum(flat**2, axis=1)
  dist = sq[:, None] + sq[None, :] - 2 * flat @ flat.T
  big = jnp.inf
  dist = jnp.where(accepted[None, :] & accepted[:, None], dist, big)
  dist = jnp.where(jnp.eye(k, dtype=bool), big, dist)
  n = jnp.sum(accepted)
  near = jnp.clip(n - f - 2, 1, k - 1)
  ordered = jnp.sort(dist, axis=1)
  scores = jnp.sum(jnp.where(jnp.arange(k)[None, :] < near, ordered, 0.0), axis=1)
  return jnp.where(accepted, scores, big)


def robust(recipe, stacked, accepted) -> dict:
  """The robust aggregate of updates stacked ``[K, ...]`` (rejected rows excluded)."""
  k = accepted.shape[0]
  n = jnp.sum(accepted)
  if recipe.aggregator == "krum":
    flat = jnp.concatenate([x.reshape(k, -1) for x in jax.tree.leaves(stacked)], axis=1)
    order = jnp.argsort(krum_scores(flat, accepted, recipe.byzantine))
    chosen = jnp.zeros(k).at[order[: recipe.select]].set(1.0) * accepted
    w = chosen / jnp.maximum(chosen.sum(), 1)
    return jax.tree.map(lambda x: jnp.tensordot(w, x, axes=1), stacked)

  def per_coordinate(x):
    # Rejected rows become +inf / -inf in alternation so they fall off both ends evenly:
    # sorted, the accepted values sit in the middle positions [lo, lo + n).
    big = jnp.where(jnp.arange(k) % 2 == 0, jnp.inf, -jnp.inf).reshape(k, *([1] * (x.ndim - 1)))
    mask = accepted.reshape(k, *([1] * (x.ndim - 1)))
    s = jnp.sort(jnp.where(mask, x, big), axis=0)
    lo = jnp.sum(~accepted & (jnp.arange(k) % 2 == 1))  # the -inf rows come first
    pos = jnp.arange(k).reshape(k, *([1] * (x.ndim - 1)))
    if recipe.aggregator == "median":
      mid = lo + (n - 1) // 2, lo + n // 2  # both middles (equal for odd n)
      pick = (pos == mid[0]) | (pos == mid[1])
    else:  # trimmed mean: cut floor(trim * n) at each end of the accepted values
      cut = jnp.floor(recipe.trim * n).astype(jnp.int32)
      pick = (pos >= lo + cut) & (pos < lo + n - cut)
    return jnp.sum(jnp.where(pick, s, 0.0), axis=0) / jnp.maximum(jnp.sum(pick, axis=0), 1)

  return jax.tree.map(per_coordinate, stacked)
