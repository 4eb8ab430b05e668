"""The federated round's recipe: the pieces between a client's local training and the
new global model, each a pure function, composed by name from ``config.fed``.

A round (:mod:`jaxseg.fed.simulate`) runs them in this order:

1. **who trains** (:func:`sample`): ``clients_per_round`` K of the N clients, drawn
   from the round's key (``client_sampling`` ``uniform``, or ``size``: in proportion
   to their images), or every client (K = 0);
2. **the client algorithm**, inside local training (:func:`client_tx`, an optax
   transformation in front of the client optimizer): ``fedavg`` none; ``fedprox``
   FedProx's proximal term; ``scaffold`` SCAFFOLD's drift correction ``c - c_i``
   (each client's control variate ``c_i`` kept between rounds, :func:`scaffold_local`);
   ``fedbn`` none, but each client's BatchNorm parameters and statistics stay with it
   (:func:`bn_mask`): neither sent nor averaged, evaluated per site;
3. **the client's update** ``delta = w_client - w_global`` (:func:`client_update`): a
   simulated ``attack`` (the first ``attack.clients`` clients send ``nan``,
   ``sign_flip``-ped or ``scale``-d updates), DP clipping (``dp.clip`` ``fixed`` or
   ``adaptive``), compression (``compress.kind`` ``q8`` or ``topk``);
4. **the server's check**: an update with a non-finite value is rejected (weight 0;
   the run's log names the client), never averaged in (:func:`accepted`);
5. **aggregation** (:func:`aggregate`): ``mean`` weighted by client images (DP: each
   client weighs 1), from summable contributions (the clients' weighted sums: what a
   mesh ``psum`` and Flower's sites send), or from every client's update stacked:
   coordinate-wise ``median``, ``trimmed_mean``, (Multi-)``krum``;
6. **the server's transform** (:func:`server_noise`): DP's Gaussian noise on the sum
   and the adaptive clipping norm's update; then the server optimizer
   (``config.fed.server_optim``) applies the pseudo-gradient ``-mean``.

State a piece keeps across rounds lives in the server state's ``recipe`` dict (the
adaptive clipping norm, SCAFFOLD's server control variate); what a client keeps
(FedBN's BatchNorm, SCAFFOLD's ``c_i``: :func:`local_init`) in its ``clients`` dict,
stacked over the clients (a real site keeps its own on its disk); the privacy spent
is computed on the host by a maintained accountant (:func:`epsilon`, ``dp-accounting``).
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxseg.errors import UserError

ALGORITHMS = ("fedavg", "fedprox", "scaffold", "fedbn")
AGGREGATORS = ("mean", "median", "trimmed_mean", "krum")
CLIPS = ("none", "fixed", "adaptive")
COMPRESSIONS = ("none", "q8", "topk")
ATTACKS = ("none", "nan", "sign_flip", "scale")
CLIENT_SAMPLINGS = ("uniform", "size")
# Folded into the round's recipe key (a stream of its own: jaxseg.fed.backends.place)
# for the server's randomness; clients fold their row number in instead.
NOISE_KEY, SAMPLE_KEY = 2**31 - 1, 2**31 - 2

# The recipe's keys in ``config.fed``, with their defaults (configs/fed_common.py).
DEFAULTS = dict(
  algorithm="fedavg",
  prox_mu=0.01,
  clients_per_round=0,
  client_sampling="uniform",
  aggregator=dict(name="mean", trim=0.25, byzantine=1, select=1),
  dp=dict(
    clip="none",
    clip_norm=0.1,
    noise_multiplier=0.0,
    delta=1e-5,
    target_quantile=0.5,
    clip_lr=0.2,
    count_noise=0.05,
  ),
  compress=dict(kind="none", fraction=0.01),
  attack=dict(kind="none", clients=0, factor=10.0),
)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The round's pieces (hashable: a static part of the compiled round)."""

  algorithm: str = "fedavg"
  prox_mu: float = 0.0
  clients_per_round: int = 0  # 0: every client
  client_sampling: str = "uniform"
  aggregator: str = "mean"
  trim: float = 0.25  # trimmed_mean: the fraction cut at each end
  byzantine: int = 1  # krum: the attackers assumed (f)
  select: int = 1  # krum: the updates averaged (m; 1 is Krum)
  clip: str = "none"
  clip_norm: float = 0.1  # fixed: the norm; adaptive: the first round's
  noise_multiplier: float = 0.0  # z: noise std = z * clip norm, on the sum
  delta: float = 1e-5
  target_quantile: float = 0.5  # adaptive: the fraction of updates left unclipped
  clip_lr: float = 0.2  # adaptive: geometric step of the norm
  count_noise: float = 0.05  # adaptive: the noisy count's std, per sampled client
  compress: str = "none"
  fraction: float = 0.01  # topk: the fraction of each tensor's entries sent
  attack: str = "none"
  attackers: int = 0
  factor: float = 10.0
  clients: int = 1  # trained per round (K, or N when every client trains)
  num_clients: int = 1  # N
  client_lr: float = 0.0  # scaffold: the clients' SGD step (eta_l)

  @property
  def stacked(self) -> bool:
    """Whether the aggregator needs every update (not only their sums)."""
    return self.aggregator != "mean"

  @property
  def dp(self) -> bool:
    return self.clip != "none"


FEDAVG = Recipe()  # every client, the weighted mean, nothing else


def of(config) -> Recipe:
  """The :class:`Recipe` of a federated config (checked: :func:`check`)."""
  return from_config(config.fed, config.optim.lr)


def from_config(fc, client_lr: float = 0.0) -> Recipe:
  """The :class:`Recipe` of ``config.fed``; ``client_lr``: ``config.optim.lr``
  (SCAFFOLD's control variates divide by it)."""
  check(fc)
  agg, dp, comp, attack = fc.aggregator, fc.dp, fc.compress, fc.attack
  return Recipe(
    algorithm=fc.algorithm,
    prox_mu=float(fc.prox_mu),
    clients_per_round=int(fc.clients_per_round),
    client_sampling=fc.client_sampling,
    aggregator=agg.name,
    trim=float(agg.trim),
    byzantine=int(agg.byzantine),
    select=int(agg.select),
    clip=dp.clip,
    clip_norm=float(dp.clip_norm),
    noise_multiplier=float(dp.noise_multiplier),
    delta=float(dp.delta),
    target_quantile=float(dp.target_quantile),
    clip_lr=float(dp.clip_lr),
    count_noise=float(dp.count_noise),
    compress=comp.kind,
    fraction=float(comp.fraction),
    attack=attack.kind,
    attackers=int(attack.clients),
    factor=float(attack.factor),
    clients=int(fc.clients_per_round or fc.num_clients),
    num_clients=int(fc.num_clients),
    client_lr=float(client_lr),
  )


def _known(key: str, value, known) -> None:
  if value not in known:
    raise UserError(f"config.fed.{key}: unknown {value!r}; known: {', '.join(known)}.")


def check(fc) -> None:
  """One line naming the first wrong recipe key of ``config.fed``."""
  for key in DEFAULTS:
    if key not in fc:
      raise UserError(f"config.fed.{key} is missing (configs/fed_common.py has its default).")
  _known("algorithm", fc.algorithm, ALGORITHMS)
  _known("client_sampling", fc.client_sampling, CLIENT_SAMPLINGS)
  _known("aggregator.name", fc.aggregator.name, AGGREGATORS)
  _known("dp.clip", fc.dp.clip, CLIPS)
  _known("compress.kind", fc.compress.kind, COMPRESSIONS)
  _known("attack.kind", fc.attack.kind, ATTACKS)
  if fc.dp.clip != "none" and fc.aggregator.name != "mean":
    raise UserError(
      "config.fed.dp: the noise is calibrated to the sum of clipped updates; use "
      f"config.fed.aggregator.name='mean' with DP (found {fc.aggregator.name!r})."
    )
  k, n = fc.clients_per_round, fc.num_clients
  if not 0 <= k <= n:
    raise UserError(f"config.fed.clients_per_round must be in [0, num_clients={n}], found {k}.")
  if fc.prox_mu < 0:
    raise UserError(f"config.fed.prox_mu must be >= 0, found {fc.prox_mu}.")
  if not 0 <= fc.aggregator.trim < 0.5:
    raise UserError(f"config.fed.aggregator.trim must be in [0, 0.5), found {fc.aggregator.trim}.")
  if fc.aggregator.select < 1 or fc.aggregator.byzantine < 0:
    raise UserError(
      "config.fed.aggregator.select must be >= 1 and byzantine >= 0, found "
      f"{fc.aggregator.select} and {fc.aggregator.byzantine}."
    )
  if fc.dp.clip_norm <= 0 or fc.dp.noise_multiplier < 0 or not 0 < fc.dp.delta < 1:
    raise UserError(
      "config.fed.dp: clip_norm must be > 0, noise_multiplier >= 0 and delta in (0, 1); "
      f"found {fc.dp.clip_norm}, {fc.dp.noise_multiplier}, {fc.dp.delta}."
    )
  if fc.dp.noise_multiplier > 0 and fc.dp.clip == "none":
    raise UserError(
      "config.fed.dp.noise_multiplier > 0 needs clipped updates (the noise is calibrated to "
      "the clipping norm): set config.fed.dp.clip to 'fixed' or 'adaptive'."
    )
  if not 0 < fc.compress.fraction <= 1:
    raise UserError(
      f"config.fed.compress.fraction must be in (0, 1], found {fc.compress.fraction}."
    )
  if fc.attack.kind != "none" and not 0 < fc.attack.clients <= n:
    raise UserError(
      f"config.fed.attack.clients must be in [1, num_clients={n}] for attack "
      f"{fc.attack.kind!r}, found {fc.attack.clients}."
    )


# --- 1. who trains --------------------------------------------------------------------


def sample(recipe: Recipe, key, size) -> jax.Array:
  """The rows that train this round, ``[K]`` sorted (all rows when K is 0): K of the
  live rows (``size > 0``), without replacement, uniformly or in proportion to
  ``size``."""
  rows = size.shape[0]
  if not recipe.clients_per_round:
    return jnp.arange(rows)
  live = (size > 0).astype(jnp.float32)
  p = live if recipe.client_sampling == "uniform" else size.astype(jnp.float32)
  picked = jax.random.choice(key, rows, (recipe.clients_per_round,), replace=False, p=p / p.sum())
  return jnp.sort(picked)


def weights(recipe: Recipe, size) -> jax.Array:
  """Each trained client's aggregation weight: its images; 1 with DP (the sum's
  sensitivity is the clipping norm) or with ``size`` sampling (already proportional to
  size: Li et al. 2020's scheme I averages the sampled uniformly)."""
  live = (size > 0).astype(jnp.float32)
  if recipe.dp or (recipe.clients_per_round and recipe.client_sampling == "size"):
    return live
  return size.astype(jnp.float32)


# --- 2. the client algorithm ----------------------------------------------------------


class ProxState(NamedTuple):
  anchor: optax.Params  # the global weights the client started from


def proximal(mu: float) -> optax.GradientTransformation:
  """FedProx's proximal term as a gradient transformation: ``g + mu (w - w_global)``,
  the gradient of ``mu/2 ||w - w_global||^2`` added to the loss's, ``w_global`` being
  the weights at ``init`` (a client's optimizer is initialised from the broadcast
  every round). The official code does the same inside its optimizer:
  litian96/FedProx ``flearn/optimizer/pgd.py``, ``PerturbedGradientDescent._apply_dense``
  (``var - lr * (grad + mu * (var - vstar))``), followed here by the client's own
  optimizer (plain SGD there)."""

  def init(params):
    return ProxState(anchor=params)

  def update(updates, state, params):
    return jax.tree.map(lambda g, w, a: g + mu * (w - a), updates, params, state.anchor), state

  return optax.GradientTransformation(init, update)


class Correction(NamedTuple):
  correction: optax.Params  # SCAFFOLD: c - c_i, set by the round (jaxseg.fed.simulate)


def scaffold_correction() -> optax.GradientTransformation:
  """SCAFFOLD's corrected gradient ``g - c_i + c`` (Karimireddy et al. 2020, Alg. 1
  line 10), as FL4Health's ``ScaffoldClient.modify_grad`` adds ``c - c_i`` to each
  gradient before its (vanilla SGD) step; the round puts ``c - c_i`` in the state."""

  def init(params):
    return Correction(correction=jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None):
    del params
    return jax.tree.map(jnp.add, updates, state.correction), state

  return optax.GradientTransformation(init, update)


def client_tx(recipe: Recipe, tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """The client optimizer with the client algorithm's transformation in front."""
  if recipe.algorithm == "fedprox":
    return optax.chain(proximal(recipe.prox_mu), tx)
  if recipe.algorithm == "scaffold":
    return optax.chain(scaffold_correction(), tx)
  return tx


def bn_mask(params, batch_stats):
  """Per leaf of ``params``: whether it belongs to a BatchNorm layer (its module also
  holds statistics in ``batch_stats``), what FedBN keeps local (med-air/FedBN
  ``federated/fed_office.py``, ``communication``: every key but those of ``bn``
  layers is averaged)."""

  def has_stats(path) -> bool:
    node = batch_stats
    for entry in path[:-1]:
      key = getattr(entry, "key", None)
      if not isinstance(node, dict) or key not in node:
        return False
      node = node[key]
    return True

  paths, treedef = jax.tree_util.tree_flatten_with_path(params)
  return jax.tree.unflatten(treedef, [has_stats(p) for p, _ in paths])


def local_init(recipe: Recipe, params, batch_stats) -> dict:
  """What one client keeps between rounds (from the initial global networks):
  FedBN its BatchNorm parameters (other leaves: a placeholder scalar) and statistics,
  SCAFFOLD its ``c_i`` (zeros)."""
  if recipe.algorithm == "fedbn":
    return kept_bn(params, batch_stats)
  if recipe.algorithm == "scaffold":
    return {"c": jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)}
  return {}


def with_local_bn(params, batch_stats, local: dict):
  """FedBN: the global ``params`` with the client's own BatchNorm parameters, and its
  own statistics."""
  mask = bn_mask(params, batch_stats)
  mine = jax.tree.map(lambda g, m, x: x if m else g, params, mask, local["params"])
  return mine, local["batch_stats"]


def kept_bn(params, batch_stats) -> dict:
  """FedBN: what the client keeps of its trained networks (:func:`local_init`'s shape)."""
  mask = bn_mask(params, batch_stats)
  kept = jax.tree.map(lambda x, m: x if m else jnp.zeros((), x.dtype), params, mask)
  return {"params": kept, "batch_stats": batch_stats}


def scaffold_local(recipe: Recipe, c, c_i, delta, steps):
  """SCAFFOLD's option II (Karimireddy et al. 2020, Eq. 4; FL4Health's
  ``compute_updated_control_variates``): ``c_i+ = c_i - c + (x - y_i) / (K eta_l)``
  with ``delta = y_i - x`` and ``K`` the client's steps; ``(c_i+, c_i+ - c_i)``."""
  scale = 1.0 / (jnp.maximum(steps, 1) * recipe.client_lr)
  new = jax.tree.map(lambda ci, cc, d: ci - cc - scale * d, c_i, c, delta)
  return new, jax.tree.map(jnp.subtract, new, c_i)


# --- 3. the client's update -----------------------------------------------------------


def global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def attacked(recipe: Recipe, delta, client) -> dict:
  """What an attacking client (``client < attack.clients``) sends instead of ``delta``."""
  if recipe.attack == "none":
    return delta
  bad = client < recipe.attackers
  made = {
    "nan": lambda x: jnp.full_like(x, jnp.nan),
    "sign_flip": lambda x: -recipe.factor * x,
    "scale": lambda x: recipe.factor * x,
  }[recipe.attack]
  return jax.tree.map(lambda x: jnp.where(bad, made(x), x), delta)


def clipped(delta, norm) -> tuple[dict, jax.Array]:
  """``delta`` scaled to global norm at most ``norm``, and whether it was within it."""
  n = global_norm(delta)
  scale = jnp.minimum(1.0, norm / jnp.maximum(n, 1e-12))
  return jax.tree.map(lambda x: x * scale, delta), (n <= norm).astype(jnp.float32)


def quantized(x, key) -> jax.Array:
  """``x`` in 8 bits: 256 levels between its min and max, stochastic rounding (unbiased:
  E[q] = x); what the server reconstructs from the bytes and the two float32 ends."""
  return dequantized(*quantize(x, key))


def quantize(x, key) -> tuple:
  """``(level uint8, lo, step)`` of :func:`quantized`: the bytes that travel.

  ``step`` is rounded up to 16 significant bits (a relative change below 2^-15), so
  that ``level * step`` (8 bits times 16) is exact in float32: XLA fuses ``lo + level *
  step`` into a multiply-add in some programs and not in others, and with an exact
  product both round alike — the server's reconstruction equals the site's."""
  lo, hi = x.min(), x.max()
  step = jnp.maximum(hi - lo, 1e-30) / 255.0
  bits = jax.lax.bitcast_convert_type(step, jnp.uint32)
  step = jax.lax.bitcast_convert_type((bits + 0xFF) & ~jnp.uint32(0xFF), jnp.float32)
  level = jnp.floor((x - lo) / step + jax.random.uniform(key, x.shape))
  return jnp.clip(level, 0, 255).astype(jnp.uint8), lo, step


def dequantized(level, lo, step) -> jax.Array:
  return lo + level.astype(jnp.float32) * step


def top_k(x, fraction: float) -> jax.Array:
  """``x`` with all but its ``ceil(fraction * size)`` largest magnitudes zeroed."""
  return densified(*top_k_entries(x, fraction), x.shape)


def top_k_entries(x, fraction: float) -> tuple:
  """``(values, int32 positions)`` of :func:`top_k`'s ``ceil(fraction * size)`` kept
  entries (of ``x`` flattened): what travels."""
  k = max(1, math.ceil(fraction * x.size))
  flat = x.ravel()
  _, idx = jax.lax.top_k(jnp.abs(flat), k)
  return flat[idx], idx.astype(jnp.int32)


def densified(values, idx, shape) -> jax.Array:
  return jnp.zeros(math.prod(shape), values.dtype).at[idx].set(values).reshape(shape)


def compressed(recipe: Recipe, delta, key) -> tuple[dict, dict | None]:
  """``(the update as the server reconstructs it, what travels)``: for ``q8`` the
  fields ``level``, ``lo``, ``step``, for ``topk`` ``values`` and ``index``, each a
  tree shaped like ``delta`` (:func:`decompressed` reads it back); ``None`` without
  compression."""
  if recipe.compress == "none":
    return delta, None
  leaves, treedef = jax.tree.flatten(delta)
  if recipe.compress == "q8":
    keys = jax.random.split(key, len(leaves))
    codes = [quantize(x, k) for x, k in zip(leaves, keys, strict=True)]
    names = ("level", "lo", "step")
  else:
    codes = [top_k_entries(x, recipe.fraction) for x in leaves]
    names = ("values", "index")
  wire = {n: jax.tree.unflatten(treedef, [c[i] for c in codes]) for i, n in enumerate(names)}
  return decompressed(recipe, wire, delta), wire


def decompressed(recipe: Recipe, wire: dict, like) -> dict:
  """The update ``wire`` (:func:`compressed`) stands for, shaped like ``like``."""
  if recipe.compress == "q8":
    out = jax.tree.map(dequantized, wire["level"], wire["lo"], wire["step"])
  else:
    out = jax.tree.map(
      lambda v, i, x: densified(v, i, x.shape), wire["values"], wire["index"], like
    )
  return out


def client_update(recipe: Recipe, delta, state: dict, key, client) -> tuple[dict, dict, dict]:
  """Steps 3 of the round for one client: ``(the update it sends, info, wire)``;
  ``info`` ``unclipped`` (1.0 if its norm was within the clipping norm: adaptive
  clipping's count); ``wire`` the compressed update's bytes (:func:`compressed`)."""
  delta = attacked(recipe, delta, client)
  info = {}
  if recipe.dp:
    delta, info["unclipped"] = clipped(delta, state["clip_norm"])
  delta, wire = compressed(recipe, delta, key)
  return delta, info, wire


def finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


# --- 5. aggregation -------------------------------------------------------------------


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


def robust(recipe: Recipe, stacked, accepted) -> dict:
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


def mean_of(recipe: Recipe, part: dict) -> dict:
  """The aggregate update of the clients' contributions ``part``: their sums
  (``delta`` weighted, ``weight``) or, for a robust aggregator, their updates
  stacked (``stacked``, ``accepted``)."""
  if recipe.stacked:
    out = robust(recipe, part["stacked"], part["accepted"])
    return jax.tree.map(lambda x: jnp.where(part["accepted"].any(), x, 0.0), out)
  return jax.tree.map(lambda s: s / jnp.maximum(part["weight"], 1e-12), part["delta"])


# --- 6. the server's transform --------------------------------------------------------


def init(recipe: Recipe, params=None) -> dict:
  """The state the recipe carries across rounds, in the server state: the clipping
  norm (DP), SCAFFOLD's server control variate ``c`` (zeros, over ``params``)."""
  state = {"clip_norm": jnp.float32(recipe.clip_norm)} if recipe.dp else {}
  if recipe.algorithm == "scaffold":
    state["c"] = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  return state


def noise_multipliers(recipe: Recipe) -> tuple[float, float]:
  """``(z of the sum of updates, std of the unclipped count)``. With adaptive clipping
  the count is released too, so the updates' noise grows to keep the total at ``z``
  (Andrew et al. 2021, Thm. 1: ``z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2``)."""
  z = recipe.noise_multiplier
  if recipe.clip != "adaptive" or z == 0:
    return z, 0.0
  sigma_b = recipe.count_noise * recipe.clients
  if 2 * sigma_b * z <= 1:
    raise UserError(
      f"config.fed.dp: count_noise={recipe.count_noise} x {recipe.clients} clients is too "
      f"small for noise_multiplier={z} (need 2 * count_noise * clients * z > 1)."
    )
  return (z**-2 - (2 * sigma_b) ** -2) ** -0.5, sigma_b


def server_noise(recipe: Recipe, part: dict, state: dict, key):
  """DP at the server: Gaussian noise ``N(0, (z C)^2)`` on the sum of the clipped
  updates, and (adaptive) the clipping norm's geometric update from the noisy
  fraction left unclipped, ``C <- C exp(-lr (b - target))`` (Andrew et al. 2021,
  Alg. 1; TFF's ``QuantileAdaptiveClipSumQuery``). ``(part, state)``."""
  if not recipe.dp:
    return part, state
  z, sigma_b = noise_multipliers(recipe)
  norm = state["clip_norm"]
  if z:
    leaves, treedef = jax.tree.flatten(part["delta"])
    keys = jax.random.split(key, len(leaves) + 1)
    noisy = [
      x + z * norm * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=False)
    ]
    part = {**part, "delta": jax.tree.unflatten(treedef, noisy)}
    count_noise = sigma_b * jax.random.normal(keys[-1])
  else:
    count_noise = 0.0
  if recipe.clip == "adaptive":
    unclipped = (part["unclipped"] + count_noise) / recipe.clients
    norm = norm * jnp.exp(-recipe.clip_lr * (unclipped - recipe.target_quantile))
  return part, {**state, "clip_norm": norm}


def epsilon(recipe: Recipe, rounds: int, num_clients: int) -> float:
  """ε at ``recipe.delta`` after ``rounds`` rounds of DP-FedAvg, by ``dp-accounting``'s
  RDP accountant: per round a Gaussian mechanism of noise multiplier z, sampled with
  probability K/N (fixed-size sampling accounted as Poisson, as TFF's DP tutorials do);
  inf without noise."""
  import dp_accounting

  if not recipe.dp or recipe.noise_multiplier == 0 or rounds == 0:
    return math.inf if rounds else 0.0
  event = dp_accounting.GaussianDpEvent(recipe.noise_multiplier)
  k = recipe.clients_per_round or num_clients
  if k < num_clients:
    event = dp_accounting.PoissonSampledDpEvent(k / num_clients, event)
  accountant = dp_accounting.rdp.RdpAccountant()
  accountant.compose(event, rounds)
  return float(accountant.get_epsilon(recipe.delta))


# --- bytes ----------------------------------------------------------------------------


def up_bytes(recipe: Recipe, params, batch_stats) -> int:
  """Bytes of one client's update as the recipe sends it: parameters in float32, or 8
  bits per value plus each tensor's two float32 ends (``q8``), or ``topk``'s values
  and int32 positions; BatchNorm statistics in float32 (FedBN: neither its BatchNorm
  parameters nor statistics); SCAFFOLD adds ``c_i+ - c_i`` in float32."""
  sent = params
  if recipe.algorithm == "fedbn":
    mask = bn_mask(params, batch_stats)
    sent = [x for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True) if not m]
  stats = 0 if recipe.algorithm == "fedbn" else _nbytes(batch_stats)
  controls = _nbytes(params) if recipe.algorithm == "scaffold" else 0
  return _update_bytes(recipe, sent) + stats + controls


def down_bytes(recipe: Recipe, params, batch_stats) -> int:
  """Bytes of what the server sends besides the networks: SCAFFOLD's ``c``."""
  del batch_stats
  return _nbytes(params) if recipe.algorithm == "scaffold" else 0


def _nbytes(tree) -> int:
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _update_bytes(recipe: Recipe, params) -> int:
  sizes = [math.prod(x.shape) for x in jax.tree.leaves(params)]
  if recipe.compress == "q8":
    return sum(n + 8 for n in sizes)
  if recipe.compress == "topk":
    return sum(8 * max(1, math.ceil(recipe.fraction * n)) for n in sizes)
  return sum(4 * n for n in sizes)
