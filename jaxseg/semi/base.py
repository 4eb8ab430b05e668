"""What the semi-supervised methods share: state, context, forward passes, losses."""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct

from jaxseg import losses
from jaxseg.data import augment
from jaxseg.models.layers import center_crop
from jaxseg.train.step import split_outputs


class Net(struct.PyTreeNode):
  params: Any
  batch_stats: Any
  opt_state: Any


class SemiState(struct.PyTreeNode):
  step: jax.Array
  nets: dict  # name -> Net


@dataclasses.dataclass(frozen=True)
class Context:
  model: nn.Module
  loss_fn: Callable
  tx: optax.GradientTransformation
  augmentations: Mapping
  image_shape: tuple
  total_steps: int
  kwargs: Mapping  # the method's settings


@dataclasses.dataclass(frozen=True)
class Method:
  init: Callable
  step: Callable
  evaluated: str
  exchanged: tuple[str, ...]
  sends_seeds: bool = False


def init_net(ctx: Context, key: jax.Array, trainable: bool = True) -> Net:
  variables = ctx.model.init({"params": key, "dropout": key}, jnp.zeros((1, *ctx.image_shape)))
  params = variables["params"]
  return Net(
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=ctx.tx.init(params) if trainable else None,
  )


def forward(ctx: Context, params, batch_stats, image, key, *, train: bool = True):
  """``(logits, new_batch_stats)`` of one network (deep-supervision heads averaged)."""
  if not train:
    out = ctx.model.apply({"params": params, "batch_stats": batch_stats}, image, train=False)
    return split_outputs(out)[0], batch_stats
  out, updates = ctx.model.apply(
    {"params": params, "batch_stats": batch_stats},
    image,
    train=True,
    rngs={"dropout": key},
    mutable=["batch_stats"],
  )
  return split_outputs(out)[0], updates.get("batch_stats", batch_stats)


def supervised_loss(ctx: Context, logits, batch):
  size = logits.shape[1:3]
  labels = center_crop(batch.get("soft_labels", batch["labels"]), size)
  weights = batch.get("weights")
  loss = ctx.loss_fn(logits, labels, None if weights is None else center_crop(weights, size))
  # A federated client without labels (label-at-server) sends its unlabeled batch
  # with ``sup_weight`` 0: same shapes for every client, no supervised signal.
  return loss * batch["sup_weight"] if "sup_weight" in batch else loss


def hard_pseudo_labels(logits):
  """Stop-gradient hard labels (``logit > 0`` or argmax)."""
  logits = jax.lax.stop_gradient(logits)
  if logits.shape[-1] == 1:
    return (logits[..., 0] > 0).astype(jnp.int32)
  return jnp.argmax(logits, -1).astype(jnp.int32)


def pseudo_label_loss(logits, targets):
  """Cross-entropy against (hard or soft) pseudo-labels, mean over pixels."""
  if targets.ndim == logits.ndim:  # soft multi-class targets [B, H, W, K]
    return jnp.mean(optax.softmax_cross_entropy(logits, targets))
  return jnp.mean(losses.cross_entropy_map(logits, targets))


def augmented(ctx: Context, key, labeled, unlabeled):
  """Both batches through the config's augmentation chain (independent keys)."""
  k1, k2 = jax.random.split(key)
  return augment.apply(ctx.augmentations, k1, labeled), augment.apply(
    ctx.augmentations, k2, unlabeled
  )


def apply_grads(ctx: Context, net: Net, grads, batch_stats) -> Net:
  updates, opt_state = ctx.tx.update(grads, net.opt_state, net.params)
  return net.replace(
    params=optax.apply_updates(net.params, updates), batch_stats=batch_stats, opt_state=opt_state
  )


def ramp_up(step, length: int):
  """The sigmoid-shaped ramp-up ``exp(-5 (1 - t)^2)`` of Laine & Aila / Mean Teacher."""
  t = jnp.clip(step / jnp.maximum(length, 1), 0.0, 1.0)
  return jnp.exp(-5.0 * (1.0 - t) ** 2)
