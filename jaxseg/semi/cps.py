"""Cross Pseudo Supervision (Chen et al. 2021), as its official code computes it.

Two networks of the same architecture, initialised independently; each is trained on
the supervised loss plus ``weight`` times the cross-entropy against the other's hard
pseudo-labels (stop-gradient). The reference is TorchSemiSeg (charlesCXK/TorchSemiSeg,
``exp.voc/voc8.res50v3+.CPS/train.py`` at commit 5e0c29c):

* L179-182: each network runs the labeled and the unlabeled images in *separate*
  forward passes (BatchNorm normalises each batch by its own statistics);
* L185-191: the pseudo-supervision is one cross-entropy mean over the *concatenated*
  labeled and unlabeled predictions, ``CE([p_a^l; p_a^u], argmax [p_b^l; p_b^u]) +
  CE([p_b^l; p_b^u], argmax [p_a^l; p_a^u])``, weighted by ``cps_weight`` (L194; 1.5
  in ``config.py`` L74), so each image (pixel) counts once;
* L197-220: ``loss = CE(p_a^l, y) + CE(p_b^l, y) + cps_weight * cps``.

Settings keep what jaxseg did before: ``cross_mean="separate"`` adds the labeled and
the unlabeled terms as two means (twice the effective weight for equal batches);
``separate_passes=False`` runs one pass over both batches; ``on_labeled=False`` keeps
the unlabeled term only. A federated client without labels (label-at-server) sends
a placeholder labeled batch with ``sup_weight`` 0: its images then weigh nothing in
the mean. The first network is evaluated.
"""

import jax
import jax.numpy as jnp

from jaxseg.errors import UserError
from jaxseg.semi import Method, base
from jaxseg.train import state as state_lib
from jaxseg.train import step as step_lib

CROSS_MEANS = ("joint", "separate")


def cross_pseudo(logits_a, logits_b):
  """Each network's cross-entropy against the other's hard pseudo-labels."""
  return base.pseudo_label_loss(logits_a, base.hard_pseudo_labels(logits_b)) + (
    base.pseudo_label_loss(logits_b, base.hard_pseudo_labels(logits_a))
  )


def joint_cross_pseudo(sup_a, un_a, sup_b, un_b, labeled_weight=1.0):
  """:func:`cross_pseudo` as one mean over the labeled and unlabeled images together
  (each image counts once; the labeled ones times ``labeled_weight``)."""
  n, m = sup_a.shape[0], un_a.shape[0]
  weights = jnp.concatenate([jnp.full((n,), labeled_weight), jnp.ones((m,))])
  a, b = jnp.concatenate([sup_a, un_a]), jnp.concatenate([sup_b, un_b])

  def per_image(logits, other):
    pixels = base.pseudo_label_map(logits, base.hard_pseudo_labels(other))
    return pixels.reshape(pixels.shape[0], -1).mean(1)

  total = per_image(a, b) + per_image(b, a)
  return jnp.sum(weights * total) / jnp.maximum(weights.sum(), 1e-12)


def make(
  weight: float = 1.5,
  on_labeled: bool = True,
  cross_mean: str = "joint",
  separate_passes: bool = True,
) -> Method:
  """``weight``: λ of the cross pseudo-supervision (TorchSemiSeg's 1.5); ``on_labeled``:
  apply it to the labeled images too; ``cross_mean``: ``joint`` (one mean over both
  batches, the official code) or ``separate`` (two means added); ``separate_passes``:
  labeled and unlabeled images in separate forward passes (the official code)."""
  if cross_mean not in CROSS_MEANS:
    raise UserError(f"cps: cross_mean must be one of {CROSS_MEANS}, found {cross_mean!r}.")

  def init(ctx, key):
    ka, kb = jax.random.split(key)
    return state_lib.start({"a": step_lib.init_net(ctx, ka), "b": step_lib.init_net(ctx, kb)})

  def cross_term(sup_a, un_a, sup_b, un_b, sup_weight):
    if not on_labeled:
      return cross_pseudo(un_a, un_b)
    if cross_mean == "joint":
      return joint_cross_pseudo(sup_a, un_a, sup_b, un_b, sup_weight)
    return cross_pseudo(un_a, un_b) + sup_weight * cross_pseudo(sup_a, sup_b)

  def step(ctx, state, labeled, unlabeled, key):
    key = jax.random.fold_in(key, state.step)
    k_aug, ka, kb = jax.random.split(key, 3)
    labeled, unlabeled = step_lib.augmented(ctx, k_aug, labeled, unlabeled)
    a, b = state.nets["a"], state.nets["b"]
    together = not separate_passes

    def loss_of(params):
      sup_a, un_a, stats_a = step_lib.forward_pair(
        ctx, params["a"], a.batch_stats, labeled, unlabeled["image"], ka, together
      )
      sup_b, un_b, stats_b = step_lib.forward_pair(
        ctx, params["b"], b.batch_stats, labeled, unlabeled["image"], kb, together
      )
      sup = step_lib.supervised_loss(ctx, sup_a, labeled) + step_lib.supervised_loss(
        ctx, sup_b, labeled
      )
      sup_weight = step_lib.supervision(labeled)
      cross = cross_term(sup_a.logits, un_a.logits, sup_b.logits, un_b.logits, sup_weight)
      info = base.pseudo_label_info(
        base.hard_pseudo_labels(un_a.logits), base.hard_pseudo_labels(un_b.logits)
      )
      return sup + weight * cross, (stats_a, stats_b, sup, cross, info)

    params = {"a": a.params, "b": b.params}
    (loss, (sa, sb, sup, cross, info)), grads = step_lib.value_and_grad(ctx, loss_of, params)
    nets = {
      "a": step_lib.apply_grads(ctx.tx, a, grads["a"], sa),
      "b": step_lib.apply_grads(ctx.tx, b, grads["b"], sb),
    }
    metrics = {"loss": loss, "sup": sup, "unsup": cross, **info}
    return state.replace(step=state.step + 1, nets=nets), metrics

  return Method(init=init, step=step, evaluated="a", exchanged=("a", "b"))
