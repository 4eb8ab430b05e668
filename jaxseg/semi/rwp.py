"""RWP: FedWeP's client objective (SPEC §1), centralized.

From a seed pair ``(s1, s2)`` two perturbed copies ``W~1 = rwp(W, s1)``,
``W~2 = rwp(W, s2)`` of one network produce hard pseudo-labels on the unlabeled
batch that supervise each other; the unperturbed ``W`` is trained with the
supervised loss on the labeled batch:

    L = L_sup(W) + weight * [ l(f(U; W~1), Y2) + l(f(U; W~2), Y1) ]

Gradients of the cross terms reach ``W`` through the perturbation (dW~/dW = Z).
BatchNorm statistics are updated only by the unperturbed model's pass; the
perturbed passes normalise with their own batch statistics and discard them. The
seed pair is passed in (``extra=``: in federation the server's seed search, this
method's :class:`jaxseg.semi.Broadcast`, makes it every round) or,
centralized and at a label-at-server server, drawn from the key every
``seed_period`` steps (1: fresh seeds every step — a choice of ours; the paper does
not say how the server picks its own seeds).
"""

import jax
import jax.numpy as jnp

from jaxseg import perturb
from jaxseg.fed import seed_search
from jaxseg.semi import Broadcast, Method, base
from jaxseg.train import step as step_lib


def seed_pair(key, step, period: int):
  """Two seeds (uint32) shared by all steps of one period."""
  return jax.random.bits(jax.random.fold_in(key, step // period), (2,), jnp.uint32)


def rwp_loss(ctx, params, batch_stats, labeled, unlabeled, seeds, key, p, sigma, weight):
  """``(loss, (new_batch_stats, sup, cross, pseudo-label info))`` of the RWP objective."""
  k0, k1, k2 = jax.random.split(key, 3)
  out, stats = step_lib.forward(
    ctx, params, batch_stats, labeled["image"], k0, labels=labeled["labels"]
  )
  sup = step_lib.supervised_loss(ctx, out, labeled)
  w1 = perturb.rwp(params, seeds[0], p=p, sigma=sigma)
  w2 = perturb.rwp(params, seeds[1], p=p, sigma=sigma)
  logits1 = step_lib.forward(ctx, w1, batch_stats, unlabeled["image"], k1)[0].logits
  logits2 = step_lib.forward(ctx, w2, batch_stats, unlabeled["image"], k2)[0].logits
  y1, y2 = base.hard_pseudo_labels(logits1), base.hard_pseudo_labels(logits2)
  cross = base.pseudo_label_loss(logits1, y2) + base.pseudo_label_loss(logits2, y1)
  return sup + weight * cross, (stats, sup, cross, pseudo_label_info(y1, y2))


def pseudo_label_info(y1, y2) -> dict:
  """What the two perturbed networks' hard pseudo-labels hold (logged every step): the
  fraction of foreground pixels, and of pixels on which they agree."""
  return {
    "pseudo_fg": (jnp.mean(y1 > 0) + jnp.mean(y2 > 0)) / 2,
    "pseudo_agree": jnp.mean(y1 == y2),
  }


def make(
  p: float = 0.5,
  sigma: float = 0.1,
  weight: float = 1.0,
  seed_period: int = 1,
  ramp_up_steps: int = 0,
) -> Method:
  """``p``, ``sigma``: the perturbation (:func:`jaxseg.perturb.rwp`); ``weight``: of the
  cross terms; ``seed_period``: steps that share a drawn seed pair; ``ramp_up_steps``
  > 0: the weight rises over that many steps (Mean Teacher's sigmoid ramp-up) — not
  in the paper (0, off, by default); against the collapse of a run whose first
  pseudo-labels are nearly all background (README, *FedWeP's collapse*)."""

  def step(ctx, state, labeled, unlabeled, key, extra=None):
    seeds = extra
    if seeds is None:
      seeds = seed_pair(jax.random.fold_in(key, 7), state.step, seed_period)
    key = jax.random.fold_in(key, state.step)
    k_aug, k_loss = jax.random.split(key)
    labeled, unlabeled = step_lib.augmented(ctx, k_aug, labeled, unlabeled)
    net = state.nets["model"]
    scale = weight * base.ramp_up(state.step, ramp_up_steps) if ramp_up_steps else weight
    loss_of = lambda params: rwp_loss(  # noqa: E731
      ctx, params, net.batch_stats, labeled, unlabeled, seeds, k_loss, p, sigma, scale
    )
    (loss, (stats, sup, cross, info)), grads = step_lib.value_and_grad(ctx, loss_of, net.params)
    net = step_lib.apply_grads(ctx.tx, net, grads, stats)
    metrics = {"loss": loss, "sup": sup, "unsup": cross, **info}
    return state.replace(step=state.step + 1, nets={"model": net}), metrics

  def search(ctx, nets, server_images, key, settings):
    net = nets["model"]
    return seed_search.server_hook(ctx, net, server_images, key, settings, p=p, sigma=sigma)

  broadcast = Broadcast(
    make=search,
    nbytes=seed_search.SEED_BYTES,
    what="seeds",
    settings="seed_search",
    check=seed_search.check_settings,
    server_images=seed_search.server_images,
  )
  return Method(
    init=base.init_one, step=step, evaluated="model", exchanged=("model",), broadcast=broadcast
  )
