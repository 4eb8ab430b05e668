"""FedWeP's server-side seed search (SPEC §1).

The server draws ``N`` candidate seeds, builds the perturbed models
``W~_i = rwp(W, s_i)`` and predicts the probe set with all of them in one vmapped
pass. ``c_ij`` is the cosine similarity of the prediction maps of models ``i`` and
``j``, averaged over the probe images; the pair ``i != j`` is chosen by

* ``most_similar`` (default): ``argmax c_ij`` — the two models do not deviate
  excessively;
* ``least_similar``: ``argmin c_ij`` — the most diverse pair (an ablation);
* ``target``: ``argmin |c_ij - target|``.

Probe sets: ``random`` (FedWeP-Random: uniform noise images drawn from the key, no
data at the server) or ``real`` (FedWeP-Real: the server's own images).

``statistics``: how the perturbed models normalise the probe. ``batch`` (default):
with the probe's own batch statistics, as the clients' perturbed passes do in
training (:mod:`jaxseg.semi.rwp`), so the pair is judged in the regime it is used in;
``running``: with the global model's running statistics (inference mode; what jaxseg
did before).
"""

import jax
import jax.numpy as jnp

from jaxseg import perturb
from jaxseg.errors import UserError
from jaxseg.models.interface import probabilities
from jaxseg.train import step as step_lib

SEED_BYTES = 2 * 4  # the pair of uint32 seeds the server sends
CRITERIA = ("most_similar", "least_similar", "target")
PROBES = ("random", "real")
STATISTICS = ("batch", "running")


def predictions(
  ctx, params, batch_stats, seeds, probe, key, *, p: float, sigma: float, statistics="batch"
):
  """Probabilities ``[N, X, H, W, K]`` of the ``N`` perturbed models on ``probe``
  (BatchNorm on the probe's ``batch`` statistics or the ``running`` ones)."""

  def one(seed):
    weights = perturb.rwp(params, seed, p=p, sigma=sigma)
    train = statistics == "batch"
    out, _ = step_lib.forward(ctx, weights, batch_stats, probe, key, train=train)
    return probabilities(out.logits)

  return jax.vmap(one)(seeds)


def similarity(probs):
  """``c [N, N]``: cosine similarity of prediction maps, mean over probe images."""
  flat = probs.reshape(*probs.shape[:2], -1).astype(jnp.float32)
  unit = flat / jnp.maximum(jnp.linalg.norm(flat, axis=-1, keepdims=True), 1e-12)
  return jnp.einsum("nxd,mxd->nm", unit, unit) / probs.shape[1]


def choose(c, criterion: str, target: float = 0.9):
  """``(i, j)`` with ``i < j`` chosen from the similarity matrix ``c``."""
  n = c.shape[0]
  upper = jnp.triu(jnp.ones((n, n), bool), k=1)
  if criterion == "most_similar":
    score = c
  elif criterion == "least_similar":
    score = -c
  elif criterion == "target":
    score = -jnp.abs(c - target)
  else:
    raise UserError(
      f"config.fed.seed_search.criterion: unknown {criterion!r}; known: {', '.join(CRITERIA)}."
    )
  flat = jnp.argmax(jnp.where(upper, score, -jnp.inf))
  return flat // n, flat % n


def search(
  ctx,
  params,
  batch_stats,
  probe,
  key,
  *,
  candidates: int,
  criterion: str,
  target,
  p,
  sigma,
  statistics: str = "batch",
):
  """``(seeds [2] uint32, info)``: the chosen pair, its similarity and the matrix."""
  if candidates < 2:
    raise UserError(f"config.fed.seed_search.candidates must be >= 2, found {candidates}.")
  seeds = jax.random.bits(key, (candidates,), jnp.uint32)
  probs = predictions(
    ctx,
    params,
    batch_stats,
    seeds,
    probe,
    jax.random.fold_in(key, 1),
    p=p,
    sigma=sigma,
    statistics=statistics,
  )
  c = similarity(probs)
  i, j = choose(c, criterion, target)
  off_diagonal = c.sum() - jnp.trace(c)
  info = {
    "similarity": c[i, j],
    "similarity_mean": off_diagonal / (candidates * (candidates - 1)),
    "seed_a": seeds[i],
    "seed_b": seeds[j],
  }
  return jnp.stack([seeds[i], seeds[j]]), info


def server_hook(ctx, net, server_images, key, settings, *, p: float, sigma: float):
  """FedWeP's server step (RWP's :class:`jaxseg.semi.Broadcast`): ``(seed pair,
  metrics)`` of :func:`search` on ``net`` with the ``config.fed.seed_search``
  ``settings``, over noise images (probe ``random``) or ``server_images`` (``real``)."""
  probe = server_images
  if settings["probe"] == "random":
    shape = (settings["probe_size"], *ctx.image_shape)
    probe = jax.random.uniform(jax.random.fold_in(key, 1), shape)
  return search(
    ctx,
    net.params,
    net.batch_stats,
    probe,
    jax.random.fold_in(key, 0),
    candidates=settings["candidates"],
    criterion=settings["criterion"],
    target=settings["target"],
    statistics=settings["statistics"],
    p=p,
    sigma=sigma,
  )


def server_images(settings) -> int:
  """How many of the server's images the search reads (FedWeP-Real's probe)."""
  return settings["probe_size"] if settings["probe"] == "real" else 0


def check_settings(search, scenario: str) -> None:
  """Raises a :class:`UserError` for a bad ``config.fed.seed_search`` setting."""
  for key, value, known in (
    ("probe", search.probe, PROBES),
    ("criterion", search.criterion, CRITERIA),
    ("statistics", search.statistics, STATISTICS),
  ):
    if value not in known:
      raise UserError(
        f"config.fed.seed_search.{key}: unknown {value!r}; known: {', '.join(known)}."
      )
  if search.candidates < 2:
    raise UserError(f"config.fed.seed_search.candidates must be >= 2, found {search.candidates}.")
  if search.probe == "real" and scenario != "label_at_server":
    raise UserError(
      "config.fed.seed_search.probe='real' (FedWeP-Real) needs the server's images: use "
      "scenario 'label_at_server', or probe 'random'."
    )
