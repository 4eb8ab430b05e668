"""RWP: FedWeP's client objective (SPEC §1), centralized or federated, and its server
half, the seed search (:mod:`jaxseg.semi.rwp.search`).

From a seed pair ``(s1, s2)`` two perturbed copies ``W~1 = rwp(W, s1)``,
``W~2 = rwp(W, s2)`` of one network produce hard pseudo-labels on the unlabeled
batch that supervise each other; the unperturbed ``W`` is trained with the
supervised loss on the labeled batch:

    L = L_sup(W) + weight * r(t) * [ l(f(U; W~1), Y2) + l(f(U; W~2), Y1) ]

``r(t)`` is 1, or with ``ramp_up`` > 0 Mean Teacher's sigmoid ramp-up over that
fraction of the run's steps. Gradients of the cross terms reach ``W`` through the
perturbation (dW~/dW = Z). The seed pair is passed in (``extra=``: in federation the
server's seed search, this method's :class:`jaxseg.semi.Broadcast`, makes it every
round) or, centralized and at a label-at-server server, drawn from the key every
``seed_period`` steps (1: fresh seeds every step — a choice of ours; the paper does
not say how the server picks its own seeds).

The paper gives no ``sigma``, ``p``, ``weight``, schedule or BatchNorm handling; the
defaults are what ``configs/fedwep_ablation.py`` chose by its declared rule
(docs/fedwep_study.md).
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxseg import perturb
from jaxseg.errors import UserError
from jaxseg.semi import Broadcast, Method, base
from jaxseg.semi.rwp import search
from jaxseg.train import step as step_lib

# How the perturbed passes use BatchNorm: ``batch`` — normalise with the unlabeled
# batch's statistics and discard them (only the clean labeled pass updates the
# running ones); ``running`` — inference-mode normalisation with the running
# statistics (no dropout); ``update`` — the batch's statistics, and the two perturbed
# passes update the running ones after the clean pass, in turn.
PERTURBED_BN = ("batch", "running", "update")


@dataclasses.dataclass(frozen=True)
class Perturbation:
  """``W ⊙ Z`` (:func:`jaxseg.perturb.rwp`): ``p`` of the ``leaves`` (a name of
  :data:`jaxseg.perturb.LEAVES`) multiplied by ``N(1, sigma²)``."""

  p: float
  sigma: float
  leaves: str = "kernels"

  def apply(self, params, seed):
    return perturb.rwp(params, seed, p=self.p, sigma=self.sigma, where=perturb.LEAVES[self.leaves])


def seed_pair(key, step, period: int):
  """Two seeds (uint32) shared by all steps of one period."""
  return jax.random.bits(jax.random.fold_in(key, step // period), (2,), jnp.uint32)


def perturbed_logits(ctx, weights, batch_stats, image, key, bn: str):
  """``(logits, batch_stats)`` of one perturbed pass and the statistics it leaves behind
  (changed only with ``bn="update"``)."""
  out, stats = step_lib.forward(ctx, weights, batch_stats, image, key, train=bn != "running")
  return out.logits, stats if bn == "update" else batch_stats


class Cross(NamedTuple):
  """The cross terms of one step: the ``perturbation``, its ``seeds`` pair, BatchNorm in
  the perturbed passes (``bn``, :data:`PERTURBED_BN`) and their weight ``scale``."""

  perturbation: Perturbation
  seeds: jax.Array
  bn: str
  scale: jax.Array


def rwp_loss(ctx, params, batch_stats, labeled, unlabeled, key, terms: Cross):
  """``(loss, (new_batch_stats, sup, cross, pseudo-label info))`` of the RWP objective."""
  perturbation, seeds, bn, scale = terms
  k0, k1, k2 = jax.random.split(key, 3)
  out, stats = step_lib.forward(
    ctx, params, batch_stats, labeled["image"], k0, labels=labeled["labels"]
  )
  sup = step_lib.supervised_loss(ctx, out, labeled)
  w1, w2 = perturbation.apply(params, seeds[0]), perturbation.apply(params, seeds[1])
  # ``running``: the statistics the network holds at this step; ``update``: chained.
  held = stats if bn == "update" else batch_stats
  logits1, held = perturbed_logits(ctx, w1, held, unlabeled["image"], k1, bn)
  logits2, held = perturbed_logits(ctx, w2, held, unlabeled["image"], k2, bn)
  stats = held if bn == "update" else stats
  y1, y2 = base.hard_pseudo_labels(logits1), base.hard_pseudo_labels(logits2)
  cross = base.pseudo_label_loss(logits1, y2) + base.pseudo_label_loss(logits2, y1)
  return sup + scale * cross, (stats, sup, cross, base.pseudo_label_info(y1, y2))


def _check(leaves: str, perturbed_bn: str, ramp_up: float) -> None:
  if leaves not in perturb.LEAVES:
    raise UserError(f"rwp: unknown leaves {leaves!r}; known: {', '.join(perturb.LEAVES)}.")
  if perturbed_bn not in PERTURBED_BN:
    raise UserError(
      f"rwp: unknown perturbed_bn {perturbed_bn!r}; known: {', '.join(PERTURBED_BN)}."
    )
  if not 0.0 <= ramp_up <= 1.0:
    raise UserError(f"rwp: ramp_up is a fraction of the run's steps in [0, 1], found {ramp_up}.")


def make(
  p: float = 0.5,
  sigma: float = 0.1,
  leaves: str = "kernels",
  weight: float = 0.375,
  ramp_up: float = 0.0,
  perturbed_bn: str = "batch",
  seed_period: int = 1,
) -> Method:
  """``p``, ``sigma``, ``leaves``: the perturbation (:class:`Perturbation`); ``weight``:
  of the cross terms, ramped up over the fraction ``ramp_up`` of the run's steps (0:
  off); ``perturbed_bn``: BatchNorm in the perturbed passes (:data:`PERTURBED_BN`);
  ``seed_period``: steps that share a drawn seed pair (centralized, or at a
  label-at-server server).

  Defaults: ``sigma=0.1, ramp_up=0, weight=0.375`` won the declared rule of
  ``configs/fedwep_ablation.py`` (best mean validation Dice over 6 runs: 0.653; the
  earlier ``weight=1.0`` without ramp-up: 0.372, 2 of 6 runs collapsed); 0.375 is what
  CPS puts on one network's cross-entropy of an unlabeled image at 4 + 4 images."""
  _check(leaves, perturbed_bn, ramp_up)
  perturbation = Perturbation(p, sigma, leaves)

  def step(ctx, state, labeled, unlabeled, key, extra=None):
    seeds = extra
    if seeds is None:
      seeds = seed_pair(jax.random.fold_in(key, 7), state.step, seed_period)
    key = jax.random.fold_in(key, state.step)
    k_aug, k_loss = jax.random.split(key)
    labeled, unlabeled = step_lib.augmented(ctx, k_aug, labeled, unlabeled)
    net = state.nets["model"]
    length = round(ramp_up * ctx.total_steps)
    scale = weight * base.ramp_up(state.step, length) if length else weight
    terms = Cross(perturbation, seeds, perturbed_bn, scale)
    loss_of = lambda params: rwp_loss(  # noqa: E731
      ctx, params, net.batch_stats, labeled, unlabeled, k_loss, terms
    )
    (loss, (stats, sup, cross, info)), grads = step_lib.value_and_grad(ctx, loss_of, net.params)
    net = step_lib.apply_grads(ctx.tx, net, grads, stats)
    metrics = {"loss": loss, "sup": sup, "unsup": cross, **info}
    return state.replace(step=state.step + 1, nets={"model": net}), metrics

  def server_hook(ctx, nets, server_images, key, settings: search.Settings):
    return search.server_hook(ctx, nets["model"], server_images, key, settings, perturbation)

  broadcast = Broadcast(
    make=server_hook,
    nbytes=search.SEED_BYTES,
    what="seeds",
    section="seed_search",
    settings=search.settings,
    server_images=search.server_images,
  )
  return Method(
    init=base.init_one, step=step, evaluated="model", exchanged=("model",), broadcast=broadcast
  )
