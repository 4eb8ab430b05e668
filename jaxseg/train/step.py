"""Pure, jit-able training and evaluation steps."""

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from jaxseg import metrics
from jaxseg.data import augment
from jaxseg.models.layers import center_crop
from jaxseg.train.state import TrainState


def _targets(batch: dict, logits: jax.Array) -> tuple[jax.Array, jax.Array | None]:
  """Loss targets (soft labels after mixup, else labels) and weights, cropped to the
  logits' size (valid-conv nets output less)."""
  size = logits.shape[1:3]
  weights = batch.get("weights")
  return (
    center_crop(batch.get("soft_labels", batch["labels"]), size),
    None if weights is None else center_crop(weights, size),
  )


def split_outputs(outputs) -> tuple[jax.Array, list[jax.Array]]:
  """``(logits to evaluate, heads to train)`` of a model's output (array or dict)."""
  if isinstance(outputs, dict):
    return outputs["logits"], list(outputs["heads"])
  return outputs, [outputs]


def make_train_step(
  model: nn.Module,
  loss_fn: Callable,
  tx: optax.GradientTransformation,
  augmentations: Mapping[str, Mapping],
  compute_dtype=None,
  loss_scale: float = 1.0,
) -> Callable:
  """Returns ``train_step(state, batch, key) -> (state, metrics)``.

  ``compute_dtype`` (e.g. ``jnp.bfloat16``): the forward and backward pass run in it
  on a cast copy of the float32 parameters; parameters, optimizer state, BatchNorm
  statistics and the loss stay float32. ``loss_scale``: the loss is multiplied by it
  before differentiation and the gradients divided by it after, so that small
  float16 gradients do not flush to zero (bfloat16 has float32's range: keep 1).

  ``key`` is the run's training key; the step folds in ``state.step``, so the
  randomness of step ``n`` (augmentation, dropout) does not depend on how the run got
  there: a resumed run repeats an uninterrupted one bit for bit.
  """

  takes_labels = getattr(model, "takes_labels", False)  # e.g. prob_unet's posterior net

  def train_step(state: TrainState, batch: dict, key: jax.Array):
    aug_key, dropout_key, rater_key = jax.random.split(jax.random.fold_in(key, state.step), 3)
    batch = augment.apply(augmentations, aug_key, augment.pick_annotator(rater_key, batch))

    def loss_of(params):
      image = batch["image"]
      if compute_dtype is not None:
        params, image = jax.tree.map(lambda a: a.astype(compute_dtype), (params, image))
      outputs, updates = model.apply(
        {"params": params, "batch_stats": state.batch_stats},
        image,
        *([batch["labels"]] if takes_labels else []),
        train=True,
        rngs={"dropout": dropout_key},
        mutable=["batch_stats"],
      )
      _, heads = split_outputs(outputs)  # deep supervision: the loss on every head
      labels, weights = _targets(batch, heads[0])
      heads = [head.astype(jnp.float32) for head in heads]
      loss = sum(loss_fn(head, labels, weights) for head in heads) / len(heads)
      if isinstance(outputs, dict) and "regularizer" in outputs:  # prob_unet: beta * KL
        loss = loss + outputs["regularizer"].astype(jnp.float32)
      stats = jax.tree.map(lambda a: a.astype(jnp.float32), updates.get("batch_stats", {}))
      return loss * loss_scale, (loss, stats)

    (_, (loss, batch_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    if loss_scale != 1.0:
      grads = jax.tree.map(lambda g: g / loss_scale, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats,
      opt_state=opt_state,
    )
    return state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  return train_step


def make_eval_step(model: nn.Module, loss_fn: Callable) -> Callable:
  """Returns ``eval_step(variables, batch) -> per-image loss, confusion counts, prediction``."""

  def eval_step(variables: dict, batch: dict):
    logits, _ = split_outputs(model.apply(variables, batch["image"], train=False))
    labels, weights = _targets(batch, logits)
    per_image = jax.vmap(
      lambda lg, lb, w: loss_fn(lg[None], lb[None], None if w is None else w[None])
    )
    pred = metrics.hard_labels(logits)
    return {
      "loss": per_image(logits, labels, weights),
      "pred": pred,
      "labels": labels,
      **metrics.confusion(pred, labels),
    }

  return eval_step
