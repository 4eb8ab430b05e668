"""RWP: FedWeP's client objective (SPEC §1), centralized.

From a seed pair ``(s1, s2)`` two perturbed copies ``W~1 = rwp(W, s1)``,
``W~2 = rwp(W, s2)`` of one network produce hard pseudo-labels on the unlabeled
batch that supervise each other; the unperturbed ``W`` is trained with the
supervised loss on the labeled batch:

    L = L_sup(W) + weight * [ l(f(U; W~1), Y2) + l(f(U; W~2), Y1) ]

Gradients of the cross terms reach ``W`` through the perturbation (dW~/dW = Z).
BatchNorm statistics are updated only by the unperturbed model's pass; the
perturbed passes normalise with their own batch statistics and discard them. The
seed pair comes from ``state.seeds`` (set by the federated server's seed search) or,
centralized, is drawn from the key every ``seed_period`` steps. Settings: ``p``,
``sigma`` (the perturbation), ``weight`` (1.0), ``seed_period`` (1).
"""

import jax
import jax.numpy as jnp

from jaxseg import perturb
from jaxseg.semi import base


def init(ctx, key):
  return base.SemiState(step=jnp.zeros((), jnp.int32), nets={"model": base.init_net(ctx, key)})


def seed_pair(key, step, period: int):
  """Two seeds (uint32) shared by all steps of one period."""
  return jax.random.bits(jax.random.fold_in(key, step // period), (2,), jnp.uint32)


def rwp_loss(ctx, params, batch_stats, labeled, unlabeled, seeds, key, kw):
  """``(loss, (new_batch_stats, sup, cross))`` of the RWP objective."""
  k0, k1, k2 = jax.random.split(key, 3)
  logits, stats = base.forward(ctx, params, batch_stats, labeled["image"], k0)
  sup = base.supervised_loss(ctx, logits, labeled)
  w1 = perturb.rwp(params, seeds[0], p=kw["p"], sigma=kw["sigma"])
  w2 = perturb.rwp(params, seeds[1], p=kw["p"], sigma=kw["sigma"])
  logits1, _ = base.forward(ctx, w1, batch_stats, unlabeled["image"], k1)
  logits2, _ = base.forward(ctx, w2, batch_stats, unlabeled["image"], k2)
  cross = base.pseudo_label_loss(logits1, base.hard_pseudo_labels(logits2)) + (
    base.pseudo_label_loss(logits2, base.hard_pseudo_labels(logits1))
  )
  return sup + kw["weight"] * cross, (stats, sup, cross)


def settings(kwargs) -> dict:
  return {"p": 0.5, "sigma": 0.1, "weight": 1.0, "seed_period": 1, **kwargs}


def step(ctx, state, labeled, unlabeled, key, seeds=None):
  kw = settings(ctx.kwargs)
  if seeds is None:
    seeds = seed_pair(jax.random.fold_in(key, 7), state.step, kw["seed_period"])
  key = jax.random.fold_in(key, state.step)
  k_aug, k_loss = jax.random.split(key)
  labeled, unlabeled = base.augmented(ctx, k_aug, labeled, unlabeled)
  net = state.nets["model"]
  (loss, (stats, sup, cross)), grads = jax.value_and_grad(rwp_loss, argnums=1, has_aux=True)(
    ctx, net.params, net.batch_stats, labeled, unlabeled, seeds, k_loss, kw
  )
  net = base.apply_grads(ctx, net, grads, stats)
  return state.replace(step=state.step + 1, nets={"model": net}), {
    "loss": loss,
    "sup": sup,
    "unsup": cross,
  }


METHOD = base.Method(
  init=init, step=step, evaluated="model", exchanged=("model",), sends_seeds=True
)
