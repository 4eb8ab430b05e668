"""Segmentation losses: pure functions ``loss(logits, labels, weights=None) -> scalar``.

``logits`` are ``[B, H, W, C]`` (or ``[B, D, H, W, C]`` for volumes); ``labels`` are
integer class maps ``[B, H, W]``;
``weights`` optional per-pixel weights ``[B, H, W]`` (e.g. the U-Net paper's weight
map). ``C == 1`` means binary logits of the foreground (sigmoid); ``C > 1`` means
softmax over classes. Losses are averaged over pixels and images.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from jaxseg import tables
from jaxseg.errors import UserError

LOSSES = {
  "bce": "jaxseg.losses:bce",
  "dice": "jaxseg.losses:dice",
  "bce_dice": "jaxseg.losses:bce_dice",
  "softmax_ce": "jaxseg.losses:softmax_ce",
  "weighted_ce": "jaxseg.losses:weighted_ce",
}


def get_loss(name: str, **kwargs):
  """The loss ``name`` of :data:`LOSSES` with its keyword arguments bound."""
  return functools.partial(tables.resolve(LOSSES, name, "loss"), **kwargs)


def cross_entropy_map(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-pixel cross-entropy ``[B, H, W]``: sigmoid for ``C == 1``, softmax else."""
  if logits.shape[-1] == 1:
    return optax.sigmoid_binary_cross_entropy(logits[..., 0], labels.astype(logits.dtype))
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _weighted_mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
  return jnp.mean(values if weights is None else values * weights)


def bce(logits, labels, weights=None):
  """Binary cross-entropy of single-channel logits, mean over pixels."""
  _require_channels(logits, "bce", binary=True)
  return _weighted_mean(cross_entropy_map(logits, labels), weights)


def softmax_ce(logits, labels, weights=None):
  """Softmax cross-entropy over ``C >= 2`` classes, mean over pixels."""
  _require_channels(logits, "softmax_ce", binary=False)
  return _weighted_mean(cross_entropy_map(logits, labels), weights)


def weighted_ce(logits, labels, weights=None):
  """Pixel-weighted cross-entropy ``-mean(w(x) log p_l(x)(x))`` (U-Net paper, eq. 1).

  Works for binary (sigmoid) and multi-class (softmax) logits. The weights must come
  from the data pipeline (e.g. ``data.weight_map``); without them this would silently
  be the plain cross-entropy, so it is an error.
  """
  if weights is None:
    raise UserError(
      "loss 'weighted_ce' needs per-pixel weights in the batch (key 'weights'); "
      "enable a weight map in the data config or use 'bce'/'softmax_ce'."
    )
  return _weighted_mean(cross_entropy_map(logits, labels), weights)


def dice(logits, labels, weights=None, smooth=1.0):
  """Soft Dice loss ``1 - (2 sum(p g) + s) / (sum(p) + sum(g) + s)``.

  Computed per image and averaged over the batch; for ``C > 1`` it is the mean over
  the foreground classes ``1..C-1`` of the softmax probabilities. ``smooth`` (s)
  keeps an empty mask with an empty prediction at loss ~0. ``weights`` are ignored
  (Dice is a ratio of sums; pixel weights have no standard meaning in it).
  """
  del weights
  if logits.shape[-1] == 1:
    probs = jax.nn.sigmoid(logits)
    onehot = labels[..., None].astype(probs.dtype)
  else:
    probs = jax.nn.softmax(logits)[..., 1:]
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=probs.dtype)[..., 1:]
  axes = tuple(range(1, labels.ndim))  # the spatial axes: 2-D images or 3-D volumes
  inter = jnp.sum(probs * onehot, axis=axes)
  total = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)
  return jnp.mean(1.0 - (2.0 * inter + smooth) / (total + smooth))


def bce_dice(logits, labels, weights=None, bce_weight=0.5, dice_weight=1.0, smooth=1.0):
  """``bce_weight * CE + dice_weight * Dice``; defaults are UNet++'s ½·BCE + Dice."""
  ce = _weighted_mean(cross_entropy_map(logits, labels), weights)
  return bce_weight * ce + dice_weight * dice(logits, labels, smooth=smooth)


def _require_channels(logits, name, *, binary):
  channels = logits.shape[-1]
  if binary and channels != 1:
    raise UserError(
      f"loss {name!r} needs 1 output channel, the model gives {channels}; "
      "use 'softmax_ce' for several classes."
    )
  if not binary and channels < 2:
    raise UserError(
      f"loss {name!r} needs >= 2 output channels, the model gives {channels}; "
      "use 'bce' for binary logits."
    )
