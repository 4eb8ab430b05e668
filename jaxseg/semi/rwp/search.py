"""FedWeP's server half: the seed search (SPEC §1), RWP's :class:`jaxseg.semi.Broadcast`.

The server draws ``N`` candidate seeds, builds the perturbed models
``W~_i = rwp(W, s_i)`` and predicts the probe set with all of them in one vmapped
pass. ``c_ij`` is the similarity of the predictions of models ``i`` and ``j``,
averaged over the probe images (``similarity``, :data:`SIMILARITIES`):

* ``cosine`` (default, the paper): cosine similarity of the probability maps;
* ``dice``: Dice of the two hard-label maps (mean over foreground classes; two empty
  maps agree, 1);
* ``centred``: cosine similarity of the logit maps less their mean (per image and
  class): the correlation of the two models' evidence, which a shared bias (every
  pixel called background) does not inflate.

The pair ``i != j`` is chosen by ``criterion``: ``most_similar`` (default, argmax
``c_ij``: the two models "do not deviate excessively"), ``least_similar`` (argmin: the
most diverse pair, an ablation) or ``target`` (argmin ``|c_ij - target|``). Each round
logs the chosen pair's similarity and the spread of all ``c_ij`` (mean, min, max,
std of the pairs ``i < j``).

Probe sets: ``random`` (FedWeP-Random: uniform noise images drawn from the key, no
data at the server) or ``real`` (FedWeP-Real: the server's own images).
``statistics``: how the perturbed models normalise the probe — ``batch`` (default)
with the probe's own batch statistics, as the clients' perturbed passes do in
training by default, so the pair is judged in the regime it is used in; ``running``:
with the global model's running statistics (inference mode).
"""

import dataclasses

import jax
import jax.numpy as jnp

from jaxseg import metrics
from jaxseg.errors import UserError
from jaxseg.models.interface import probabilities
from jaxseg.train import step as step_lib

SEED_BYTES = 2 * 4  # the pair of uint32 seeds the server sends
CRITERIA = ("most_similar", "least_similar", "target")
PROBES = ("random", "real")
STATISTICS = ("batch", "running")


@dataclasses.dataclass(frozen=True)
class Settings:
  """``config.fed.seed_search`` (see the module docstring)."""

  candidates: int = 8
  probe: str = "random"
  probe_size: int = 8
  criterion: str = "most_similar"
  target: float = 0.9
  statistics: str = "batch"
  similarity: str = "cosine"


def settings(section, scenario: str) -> Settings:
  """The :class:`Settings` of a ``config.fed.seed_search`` section (a mapping), checked:
  a bad value raises a :class:`UserError` naming its key."""
  values = dict(section)
  known = {f.name for f in dataclasses.fields(Settings)}
  for key in values:
    if key not in known:
      raise UserError(
        f"config.fed.seed_search.{key}: unknown setting; known: {', '.join(sorted(known))}."
      )
  found = Settings(**values)
  for key, value, choices in (
    ("probe", found.probe, PROBES),
    ("criterion", found.criterion, CRITERIA),
    ("statistics", found.statistics, STATISTICS),
    ("similarity", found.similarity, tuple(SIMILARITIES)),
  ):
    if value not in choices:
      raise UserError(
        f"config.fed.seed_search.{key}: unknown {value!r}; known: {', '.join(choices)}."
      )
  if found.candidates < 2:
    raise UserError(f"config.fed.seed_search.candidates must be >= 2, found {found.candidates}.")
  if found.probe == "real" and scenario != "label_at_server":
    raise UserError(
      "config.fed.seed_search.probe='real' (FedWeP-Real) needs the server's images: use "
      "scenario 'label_at_server', or probe 'random'."
    )
  return found


def predictions(ctx, net, seeds, probe, key, perturbation, statistics="batch"):
  """Logits ``[N, X, H, W, K]`` of the ``N`` perturbations of ``net`` (its ``params`` and
  ``batch_stats``) on ``probe`` (BatchNorm on the probe's ``batch`` statistics or the
  ``running`` ones)."""

  def one(seed):
    weights = perturbation.apply(net.params, seed)
    train = statistics == "batch"
    out, _ = step_lib.forward(ctx, weights, net.batch_stats, probe, key, train=train)
    return out.logits

  return jax.vmap(one)(seeds)


def _per_image(maps):
  """``[N, X, D]``: each model's map of each probe image, flattened, in float32."""
  return maps.reshape(*maps.shape[:2], -1).astype(jnp.float32)


def _mean_cosine(flat):
  unit = flat / jnp.maximum(jnp.linalg.norm(flat, axis=-1, keepdims=True), 1e-12)
  return jnp.einsum("nxd,mxd->nm", unit, unit) / flat.shape[1]


def cosine(logits):
  """``c [N, N]``: cosine similarity of the probability maps, mean over probe images."""
  return _mean_cosine(_per_image(probabilities(logits)))


def centred(logits):
  """``c [N, N]``: cosine similarity of the logit maps less their per-image, per-class
  mean (their correlation), mean over probe images."""
  spatial = tuple(range(2, logits.ndim - 1))
  return _mean_cosine(_per_image(logits - logits.mean(spatial, keepdims=True)))


def dice(logits):
  """``c [N, N]``: Dice of the hard-label maps, mean over foreground classes and probe
  images (two maps without a class agree on it: 1)."""
  labels = metrics.hard_labels(logits)  # [N, X, ...]
  classes = max(logits.shape[-1], 2)
  onehot = jax.nn.one_hot(labels, classes, dtype=jnp.float32)[..., 1:]  # foreground
  flat = onehot.reshape(*onehot.shape[:2], -1, onehot.shape[-1])  # [N, X, P, K]
  both = jnp.einsum("nxpk,mxpk->nmxk", flat, flat)
  sizes = flat.sum(2)  # [N, X, K]
  total = sizes[:, None] + sizes[None, :]
  score = jnp.where(total > 0, 2 * both / jnp.maximum(total, 1e-12), 1.0)
  return score.mean((2, 3))


SIMILARITIES = {"cosine": cosine, "dice": dice, "centred": centred}


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


def spread(c) -> dict:
  """Mean, min, max and std of the pairs ``c_ij``, ``i < j``."""
  n = c.shape[0]
  upper = jnp.triu(jnp.ones((n, n), bool), k=1)
  count = n * (n - 1) / 2
  mean = jnp.sum(jnp.where(upper, c, 0.0)) / count
  var = jnp.sum(jnp.where(upper, (c - mean) ** 2, 0.0)) / count
  return {
    "similarity_mean": mean,
    "similarity_min": jnp.min(jnp.where(upper, c, jnp.inf)),
    "similarity_max": jnp.max(jnp.where(upper, c, -jnp.inf)),
    "similarity_std": jnp.sqrt(var),
  }


def search(ctx, net, probe, key, settings: Settings, perturbation):
  """``(seeds [2] uint32, info)``: the pair chosen among perturbations of ``net``, its
  similarity and their spread."""
  seeds = jax.random.bits(key, (settings.candidates,), jnp.uint32)
  logits = predictions(
    ctx, net, seeds, probe, jax.random.fold_in(key, 1), perturbation, settings.statistics
  )
  c = SIMILARITIES[settings.similarity](logits)
  i, j = choose(c, settings.criterion, settings.target)
  info = {"similarity": c[i, j], **spread(c), "seed_a": seeds[i], "seed_b": seeds[j]}
  return jnp.stack([seeds[i], seeds[j]]), info


def server_hook(ctx, net, server_images, key, settings: Settings, perturbation):
  """FedWeP's server step: ``(seed pair, metrics)`` of :func:`search` on ``net``, over
  noise images (probe ``random``) or ``server_images`` (``real``)."""
  probe = server_images
  if settings.probe == "random":
    shape = (settings.probe_size, *ctx.image_shape)
    probe = jax.random.uniform(jax.random.fold_in(key, 1), shape)
  return search(ctx, net, probe, jax.random.fold_in(key, 0), settings, perturbation)


def server_images(settings: Settings) -> int:
  """How many of the server's images the search reads (FedWeP-Real's probe)."""
  return settings.probe_size if settings.probe == "real" else 0
