"""Supervised training: the labeled batch only (an unlabeled batch is ignored). Plain
supervised runs (configs without ``config.method``) train with this method too."""

import jax
import optax

from jaxseg.semi import Method, base
from jaxseg.train import step as step_lib


def make() -> Method:
  def step(ctx, state, labeled, unlabeled, key):
    del unlabeled
    aug_key, dropout_key = jax.random.split(jax.random.fold_in(key, state.step))
    (labeled,) = step_lib.augmented(ctx, aug_key, labeled)
    net = state.nets["model"]

    def loss_of(params):
      out, stats = step_lib.forward(
        ctx, params, net.batch_stats, labeled["image"], dropout_key, labels=labeled["labels"]
      )
      return step_lib.supervised_loss(ctx, out, labeled), stats

    (loss, stats), grads = step_lib.value_and_grad(ctx, loss_of, net.params)
    net = step_lib.apply_grads(ctx.tx, net, grads, stats)
    metrics = {"loss": loss, "sup": loss, "grad_norm": optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, nets={"model": net}), metrics

  return Method(init=base.init_one, step=step, evaluated="model", exchanged=("model",))
