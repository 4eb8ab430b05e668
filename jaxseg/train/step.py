"""The one step stack: a network's forward pass, its supervised loss, its update.

Every method — supervised training, the semi-supervised methods, the federated
clients — builds its step from these, so deep supervision (the loss on every head),
multi-rater picking, label-taking models (``interface.takes_labels``) and mixed
precision work the same in all of them. :class:`Context` holds a run's static parts.

Mixed precision (``compute_dtype``, e.g. ``jnp.bfloat16``): the forward and backward
pass run in it on a cast copy of the float32 parameters; parameters, optimizer state,
BatchNorm statistics and losses stay float32. ``loss_scale``: the loss is multiplied
by it before differentiation and the gradients divided by it after, so that small
float16 gradients do not flush to zero (bfloat16 has float32's range: keep 1).
"""

import dataclasses
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from jaxseg import metrics
from jaxseg.data import augment
from jaxseg.errors import UserError
from jaxseg.models.interface import Outputs, decode
from jaxseg.models.layers import center_crop
from jaxseg.train.state import Net, make_net


@dataclasses.dataclass(frozen=True)
class Context:
  model: nn.Module
  loss_fn: Callable
  tx: optax.GradientTransformation
  augmentations: Mapping
  image_shape: tuple  # [H, W, C] or [X, Y, Z, C]: the networks are initialised at
  total_steps: int  # training steps of the run (of one client over all rounds)
  compute_dtype: jnp.dtype | None = None
  loss_scale: float = 1.0


def init_net(ctx: Context, key: jax.Array, trainable: bool = True) -> Net:
  """A freshly initialised network (with optimizer state if ``trainable``)."""
  variables = ctx.model.init(
    {"params": key, "dropout": key}, jnp.zeros((1, *ctx.image_shape), jnp.float32)
  )
  return make_net(variables, ctx.tx if trainable else None)


def forward(ctx: Context, params, batch_stats, image, key, *, train=True, labels=None):
  """``(outputs, new_batch_stats)`` of one network on ``image`` (float32 outputs).

  ``labels`` reach models that take them (in training; ``None``: they use their prior).
  """
  variables = {"params": params, "batch_stats": batch_stats}
  out, stats, _ = _apply(ctx, variables, image, key, train, labels, capture=False)
  return out, stats


def forward_features(ctx: Context, params, batch_stats, image, key, *, train=True):
  """``(outputs, new_batch_stats, features)``: :func:`forward`, also returning the
  ``features`` the model sows (its deepest encoder map ``[B, h, w, C]``, float32)."""
  variables = {"params": params, "batch_stats": batch_stats}
  out, stats, sown = _apply(ctx, variables, image, key, train, None, capture=True)
  if "features" not in sown:
    raise UserError(
      f"model {type(ctx.model).__name__} exposes no encoder features (it sows no "
      "'features'); models that do: unet, wide_unet, attention_unet, scaunet(_a), unetpp."
    )
  return out, stats, sown["features"][0].astype(jnp.float32)


def _apply(ctx: Context, variables: dict, image, key, train, labels, capture):
  params, batch_stats = variables["params"], variables["batch_stats"]
  if ctx.compute_dtype is not None:
    params, image = jax.tree.map(lambda a: a.astype(ctx.compute_dtype), (params, image))
  extra = [labels] if ctx.model.interface.takes_labels and labels is not None else []
  variables = {"params": params, "batch_stats": batch_stats}
  mutable = (["batch_stats"] if train else []) + (["intermediates"] if capture else [])
  rngs = {"dropout": key} if train else {}
  out, updates = ctx.model.apply(variables, image, *extra, train=train, rngs=rngs, mutable=mutable)
  if train:
    batch_stats = updates.get("batch_stats", batch_stats)
  stats = jax.tree.map(lambda a: a.astype(jnp.float32), batch_stats)
  return decode(out).astype(jnp.float32), stats, updates.get("intermediates", {})


def forward_pair(ctx: Context, params, batch_stats, labeled: dict, image, key, together=True):
  """``(labeled outputs, outputs on image, new_batch_stats)``: one pass over both
  batches (BatchNorm sees them together), or with ``together=False`` (and where the
  model takes the labels) two, the labeled batch first, each normalised by its own
  statistics and updating the running ones in turn."""
  n = labeled["image"].shape[0]
  if ctx.model.interface.takes_labels or not together:
    k1, k2 = jax.random.split(key)
    sup, stats = forward(ctx, params, batch_stats, labeled["image"], k1, labels=labeled["labels"])
    other, stats = forward(ctx, params, stats, image, k2)
    return sup, other, stats
  both = jnp.concatenate([labeled["image"], image.astype(labeled["image"].dtype)])
  out, stats = forward(ctx, params, batch_stats, both, key)
  return out.take(slice(None, n)), out.take(slice(n, None)), stats


def targets(batch: dict, size) -> tuple[jax.Array, jax.Array | None]:
  """Loss targets (soft labels after mixup, else labels) and weights, cropped to
  ``size`` (valid-conv networks output less than their input)."""
  weights = batch.get("weights")
  return (
    center_crop(batch.get("soft_labels", batch["labels"]), size),
    None if weights is None else center_crop(weights, size),
  )


def without_labels(batch: dict) -> dict:
  """A labeled batch that carries no labels: ``batch``'s images, zero labels and the
  supervision weight 0 (:func:`supervision`). What a federated client without labels
  (label-at-server) trains its labeled branch on, so every client's step has the
  same shapes and none gets a supervised signal it does not have."""
  return {
    "image": batch["image"],
    "labels": jnp.zeros_like(batch["labels"]),
    "sup_weight": jnp.zeros((), jnp.float32),
  }


def supervision(batch: dict):
  """The weight of a labeled batch's supervised terms: 1, or 0 for
  :func:`without_labels`' batch. Every method multiplies each term that reads the
  labeled batch's labels by it."""
  return batch.get("sup_weight", 1.0)


def supervised_loss(ctx: Context, outputs: Outputs, batch: dict):
  """The loss averaged over every head, plus the model's regularizer, times the batch's
  :func:`supervision`."""
  labels, weights = targets(batch, outputs.heads[0].shape[1:-1])
  loss = sum(ctx.loss_fn(head, labels, weights) for head in outputs.heads) / len(outputs.heads)
  if outputs.regularizer is not None:
    loss = loss + outputs.regularizer
  return loss * supervision(batch) if "sup_weight" in batch else loss


def value_and_grad(ctx: Context, loss_of: Callable, params):
  """``((loss, aux), grads)`` of ``loss_of(params) -> (loss, aux)``, loss-scaled."""
  scaled = lambda p: (lambda loss, aux: (loss * ctx.loss_scale, (loss, aux)))(*loss_of(p))  # noqa: E731
  (_, (loss, aux)), grads = jax.value_and_grad(scaled, has_aux=True)(params)
  if ctx.loss_scale != 1.0:
    grads = jax.tree.map(lambda g: g / ctx.loss_scale, grads)
  return (loss, aux), grads


def apply_grads(tx: optax.GradientTransformation, net: Net, grads, batch_stats) -> Net:
  updates, opt_state = tx.update(grads, net.opt_state, net.params)
  return net.replace(
    params=optax.apply_updates(net.params, updates), batch_stats=batch_stats, opt_state=opt_state
  )


def augmented(ctx: Context, key, *batches):
  """Each batch through the config's augmentation chain (independent keys), after
  picking one rater's mask where the batch holds several."""
  keys = jax.random.split(key, 2 * len(batches))
  return tuple(
    augment.apply(ctx.augmentations, keys[2 * i], augment.pick_annotator(keys[2 * i + 1], b))
    for i, b in enumerate(batches)
  )


def make_eval_step(model: nn.Module, loss_fn: Callable) -> Callable:
  """Returns ``eval_step(variables, batch) -> per-image loss, confusion counts (the
  foreground union, and ``class_*`` per foreground class), prediction``."""

  def eval_step(variables: dict, batch: dict):
    logits = decode(model.apply(variables, batch["image"], train=False)).logits
    labels, weights = targets(batch, logits.shape[1:-1])
    per_image = jax.vmap(
      lambda lg, lb, w: loss_fn(lg[None], lb[None], None if w is None else w[None])
    )
    pred = metrics.hard_labels(logits)
    classes = metrics.class_counts(pred, labels, model.interface.num_classes, batched=True)
    return {
      "loss": per_image(logits, labels, weights),
      "pred": pred,
      "labels": labels,
      **metrics.confusion(pred, labels),
      **{f"class_{k}": v for k, v in classes.items()},
    }

  return eval_step
