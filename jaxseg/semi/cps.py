"""Cross Pseudo Supervision (Chen et al. 2021).

Two networks of the same architecture, initialised independently, each trained on
the supervised loss plus ``weight`` times the cross-entropy against the other's hard
pseudo-labels (stop-gradient) — on the labeled *and* the unlabeled batch, as the paper
defines it, ``L = L_s + λ (L_cps^l + L_cps^u)``; ``on_labeled=False`` keeps the
unlabeled term only (what jaxseg did before). A federated client without labels
(label-at-server) has no labeled batch: its term is weighted by ``sup_weight`` (0).
The first network is evaluated.
"""

import jax

from jaxseg.semi import Method, base
from jaxseg.train import state as state_lib
from jaxseg.train import step as step_lib


def cross_pseudo(logits_a, logits_b):
  """Each network's cross-entropy against the other's hard pseudo-labels."""
  return base.pseudo_label_loss(logits_a, base.hard_pseudo_labels(logits_b)) + (
    base.pseudo_label_loss(logits_b, base.hard_pseudo_labels(logits_a))
  )


def make(weight: float = 1.5, on_labeled: bool = True) -> Method:
  """``weight``: λ of the cross pseudo-supervision loss (1.5 as in the paper);
  ``on_labeled``: apply it to the labeled batch too (the paper)."""

  def init(ctx, key):
    ka, kb = jax.random.split(key)
    return state_lib.start({"a": step_lib.init_net(ctx, ka), "b": step_lib.init_net(ctx, kb)})

  def step(ctx, state, labeled, unlabeled, key):
    key = jax.random.fold_in(key, state.step)
    k_aug, ka, kb = jax.random.split(key, 3)
    labeled, unlabeled = step_lib.augmented(ctx, k_aug, labeled, unlabeled)
    a, b = state.nets["a"], state.nets["b"]

    def loss_of(params):
      sup_a, un_a, stats_a = step_lib.forward_pair(
        ctx, params["a"], a.batch_stats, labeled, unlabeled["image"], ka
      )
      sup_b, un_b, stats_b = step_lib.forward_pair(
        ctx, params["b"], b.batch_stats, labeled, unlabeled["image"], kb
      )
      sup = step_lib.supervised_loss(ctx, sup_a, labeled) + step_lib.supervised_loss(
        ctx, sup_b, labeled
      )
      cross = cross_pseudo(un_a.logits, un_b.logits)
      if on_labeled:
        cross += labeled.get("sup_weight", 1.0) * cross_pseudo(sup_a.logits, sup_b.logits)
      return sup + weight * cross, (stats_a, stats_b, sup, cross)

    params = {"a": a.params, "b": b.params}
    (loss, (sa, sb, sup, cross)), grads = step_lib.value_and_grad(ctx, loss_of, params)
    nets = {
      "a": step_lib.apply_grads(ctx.tx, a, grads["a"], sa),
      "b": step_lib.apply_grads(ctx.tx, b, grads["b"], sb),
    }
    metrics = {"loss": loss, "sup": sup, "unsup": cross}
    return state.replace(step=state.step + 1, nets=nets), metrics

  return Method(init=init, step=step, evaluated="a", exchanged=("a", "b"))
