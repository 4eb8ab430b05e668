"""Supervised baseline: the labeled batch only (the unlabeled batch is ignored)."""

import jax

from jaxseg.semi import base


def init(ctx, key):
  return base.SemiState(
    step=jax.numpy.zeros((), jax.numpy.int32), nets={"model": base.init_net(ctx, key)}
  )


def step(ctx, state, labeled, unlabeled, key):
  del unlabeled
  aug_key, dropout_key = jax.random.split(jax.random.fold_in(key, state.step))
  labeled = base.augment.apply(ctx.augmentations, aug_key, labeled)
  net = state.nets["model"]

  def loss_of(params):
    logits, stats = base.forward(ctx, params, net.batch_stats, labeled["image"], dropout_key)
    return base.supervised_loss(ctx, logits, labeled), stats

  (loss, stats), grads = jax.value_and_grad(loss_of, has_aux=True)(net.params)
  net = base.apply_grads(ctx, net, grads, stats)
  return state.replace(step=state.step + 1, nets={"model": net}), {"loss": loss, "sup": loss}


METHOD = base.Method(init=init, step=step, evaluated="model", exchanged=("model",))
