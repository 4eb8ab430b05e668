"""Cross Pseudo Supervision (Chen et al. 2021).

Two networks of the same architecture, initialised independently, each trained on
the supervised loss plus ``weight`` times the cross-entropy against the other's hard
pseudo-labels on the unlabeled batch (stop-gradient). The first network is
evaluated. Settings: ``weight`` (λ, 1.5 as in the paper).
"""

import jax
import jax.numpy as jnp

from jaxseg.semi import base


def init(ctx, key):
  ka, kb = jax.random.split(key)
  return base.SemiState(
    step=jnp.zeros((), jnp.int32), nets={"a": base.init_net(ctx, ka), "b": base.init_net(ctx, kb)}
  )


def step(ctx, state, labeled, unlabeled, key):
  weight = {"weight": 1.5, **ctx.kwargs}["weight"]
  key = jax.random.fold_in(key, state.step)
  k_aug, ka, kb = jax.random.split(key, 3)
  labeled, unlabeled = base.augmented(ctx, k_aug, labeled, unlabeled)
  both = jnp.concatenate([labeled["image"], unlabeled["image"]])
  n = labeled["image"].shape[0]
  a, b = state.nets["a"], state.nets["b"]

  def loss_of(params):
    logits_a, stats_a = base.forward(ctx, params["a"], a.batch_stats, both, ka)
    logits_b, stats_b = base.forward(ctx, params["b"], b.batch_stats, both, kb)
    sup = base.supervised_loss(ctx, logits_a[:n], labeled) + base.supervised_loss(
      ctx, logits_b[:n], labeled
    )
    cross = base.pseudo_label_loss(logits_a[n:], base.hard_pseudo_labels(logits_b[n:])) + (
      base.pseudo_label_loss(logits_b[n:], base.hard_pseudo_labels(logits_a[n:]))
    )
    return sup + weight * cross, (stats_a, stats_b, sup, cross)

  params = {"a": a.params, "b": b.params}
  (loss, (sa, sb, sup, cross)), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
  nets = {
    "a": base.apply_grads(ctx, a, grads["a"], sa),
    "b": base.apply_grads(ctx, b, grads["b"], sb),
  }
  return state.replace(step=state.step + 1, nets=nets), {"loss": loss, "sup": sup, "unsup": cross}


METHOD = base.Method(init=init, step=step, evaluated="a", exchanged=("a", "b"))
