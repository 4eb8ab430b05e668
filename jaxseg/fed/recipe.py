"""The federated round's recipe: the pieces between a client's local training and the
new global model, each a pure function, composed by name from ``config.fed``.

A round (:mod:`jaxseg.fed.simulate`) runs them in this order:

1. **who trains** (:func:`sample`): ``clients_per_round`` K of the N clients, drawn
   from the round's key (``client_sampling`` ``uniform``, or ``size``: in proportion
   to their images), or every client (K = 0);
2. **the client algorithm**, inside local training (:mod:`jaxseg.fed.algorithms`: an
   optax transformation in front of the client optimizer): ``fedavg`` none;
   ``fedprox`` FedProx's proximal term; ``scaffold`` SCAFFOLD's drift correction
   ``c - c_i`` (each client's control variate ``c_i`` kept between rounds); ``fedbn``
   none, but each client's BatchNorm parameters and statistics stay with it: neither
   sent nor averaged, evaluated per site;
3. **the client's update** ``delta = w_client - w_global`` (:func:`client_update`): a
   simulated ``attack`` (the first ``attack.clients`` clients send ``nan``,
   ``sign_flip``-ped or ``scale``-d updates), DP clipping (``dp.clip`` ``fixed`` or
   ``adaptive``: :mod:`jaxseg.fed.privacy`), compression (``compress.kind`` ``q8`` or
   ``topk``: :mod:`jaxseg.fed.compress`);
4. **the server's check**: an update with a non-finite value is rejected (weight 0;
   the run's log names the client), never averaged in (:func:`accepted`);
5. **aggregation** (:func:`aggregate`): ``mean`` weighted by client images (DP: each
   client weighs 1), from summable contributions (the clients' weighted sums: what a
   mesh ``psum`` and Flower's sites send), or from every client's update stacked:
   coordinate-wise ``median``, ``trimmed_mean``, (Multi-)``krum`` (:mod:`jaxseg.fed.robust`);
6. **the server's transform** (:func:`jaxseg.fed.privacy.server_noise`): DP's
   Gaussian noise on the sum and the adaptive clipping norm's update; then the server optimizer
   (``config.fed.server_optim``) applies the pseudo-gradient ``-mean``.

State a piece keeps across rounds lives in the server state's ``recipe`` dict (the
adaptive clipping norm, SCAFFOLD's server control variate); what a client keeps
(FedBN's BatchNorm, SCAFFOLD's ``c_i``: :func:`local_init`) in its ``clients`` dict,
stacked over the clients (a real site keeps its own on its disk); the privacy spent
is computed on the host by a maintained accountant (``dp-accounting``:
:func:`jaxseg.fed.privacy.epsilon`).
"""

import dataclasses

import jax
import jax.numpy as jnp

from jaxseg.errors import UserError
from jaxseg.fed import algorithms, compress, privacy, robust

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
  compress=dict(kind="none", fraction=0.01, error_feedback=False),
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
  error_feedback: bool = False  # what compression dropped joins the next update
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
    error_feedback=bool(comp.get("error_feedback", False)),
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
  if fc.compress.get("error_feedback", False) and (
    fc.compress.kind == "none" or fc.dp.clip != "none"
  ):
    raise UserError(
      "config.fed.compress.error_feedback carries what compression drops into the next "
      "round: it needs config.fed.compress.kind 'q8' or 'topk' and no DP (a residual "
      f"would escape the clipping); found kind {fc.compress.kind!r}, dp.clip {fc.dp.clip!r}."
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


def sample_key(recipe_key, round_) -> jax.Array:
  """The key of round ``round_``'s draw of who trains (simulation and Flower alike)."""
  return jax.random.fold_in(jax.random.fold_in(recipe_key, round_), SAMPLE_KEY)


def weights(recipe: Recipe, size) -> jax.Array:
  """Each trained client's aggregation weight: its images; 1 with DP (the sum's
  sensitivity is the clipping norm) or with ``size`` sampling (already proportional to
  size: Li et al. 2020's scheme I averages the sampled uniformly)."""
  live = (size > 0).astype(jnp.float32)
  if recipe.dp or (recipe.clients_per_round and recipe.client_sampling == "size"):
    return live
  return size.astype(jnp.float32)


# --- 2. the client algorithm (jaxseg.fed.algorithms) -----------------------------------


def local_init(recipe: Recipe, params, batch_stats) -> dict:
  """What one client keeps between rounds (from the initial global networks):
  FedBN its BatchNorm parameters (other leaves: a placeholder scalar) and statistics,
  SCAFFOLD its ``c_i`` (zeros); with error feedback the ``residual`` its compression
  has not sent yet (zeros)."""
  zeros = lambda: jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)  # noqa: E731
  out = {}
  if recipe.algorithm == "fedbn":
    out = algorithms.kept_bn(params, batch_stats)
  elif recipe.algorithm == "scaffold":
    out = {"c": zeros()}
  if recipe.error_feedback:
    out["residual"] = zeros()
  return out


# --- 3. the client's update -----------------------------------------------------------


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


def client_update(recipe: Recipe, delta, state: dict, key, client, local: dict):
  """Steps 3 of the round for one client: ``(the update it sends, info, wire,
  residual)``; ``info`` ``unclipped`` (1.0 if its norm was within the clipping norm:
  adaptive clipping's count); ``wire`` the compressed update's bytes
  (:func:`jaxseg.fed.compress.compressed`); with ``error_feedback`` the update is
  first added to what the client's compression left unsent (``local["residual"]``)
  and ``residual`` is what it leaves now (Stich et al. 2018, "Sparsified SGD with
  memory", Alg. 1: ``p = delta + e; send C(p); e = p - C(p)``), else None."""
  delta = attacked(recipe, delta, client)
  info = {}
  if recipe.dp:
    delta, info["unclipped"] = privacy.clipped(delta, state["clip_norm"])
  if recipe.error_feedback:
    delta = jax.tree.map(jnp.add, delta, local["residual"])
  sent, wire = compress.compressed(recipe, delta, key)
  residual = jax.tree.map(jnp.subtract, delta, sent) if recipe.error_feedback else None
  return sent, info, wire, residual


def finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


# --- 5. aggregation -------------------------------------------------------------------


def mean_of(recipe: Recipe, part: dict) -> dict:
  """The aggregate update of the clients' contributions ``part``: their sums
  (``delta`` weighted, ``weight``) or, for a robust aggregator, their updates
  stacked (``stacked``, ``accepted``)."""
  if recipe.stacked:
    out = robust.robust(recipe, part["stacked"], part["accepted"])
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
