"""Segmentation metrics.

Overlap metrics come from confusion counts so that they can be reported per image
(then averaged) or pooled over a set (counts summed first), and computed inside a
jitted evaluation step. Conventions for empty masks (documented and tested):

* Dice and IoU are 1 when prediction and ground truth are both empty, else 0 when
  either is empty.
* Precision is 1 when nothing is predicted and nothing is there, 0 when nothing is
  predicted but something is there (a missed structure never scores well).
* Recall is 1 when the ground truth is empty and nothing is predicted, 0 when the
  ground truth is empty but something is predicted.
* Pixel error is ``(fp + fn) / pixels``.

Distance metrics (:func:`hausdorff`) are computed on the host with scipy.
"""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

COUNTS = ("tp", "fp", "fn", "tn")


def hard_labels(logits: jax.Array) -> jax.Array:
  """Class map from logits ``[..., C]``: ``logit > 0`` if ``C == 1``, else argmax."""
  if logits.shape[-1] == 1:
    return (logits[..., 0] > 0).astype(jnp.int32)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def confusion(pred: jax.Array, gt: jax.Array) -> dict[str, jax.Array]:
  """Per-image confusion counts of foreground (label > 0) over the last two axes."""
  pred, gt = jnp.asarray(pred) > 0, jnp.asarray(gt) > 0
  count = lambda m: jnp.sum(m, axis=(-2, -1), dtype=jnp.int32)  # noqa: E731
  return dict(
    tp=count(pred & gt), fp=count(pred & ~gt), fn=count(~pred & gt), tn=count(~pred & ~gt)
  )


def _ratio(num, den, empty_value):
  num, den = jnp.asarray(num, jnp.float32), jnp.asarray(den, jnp.float32)
  return jnp.where(den > 0, num / jnp.maximum(den, 1), empty_value)


def scores(counts: dict) -> dict[str, jax.Array]:
  """Dice, IoU, precision, recall and pixel error from counts (any leading shape)."""
  tp, fp, fn, tn = (jnp.asarray(counts[k], jnp.float32) for k in COUNTS)
  return dict(
    dice=_ratio(2 * tp, 2 * tp + fp + fn, 1.0),
    iou=_ratio(tp, tp + fp + fn, 1.0),
    precision=_ratio(tp, tp + fp, jnp.where(fn > 0, 0.0, 1.0)),
    recall=_ratio(tp, tp + fn, jnp.where(fp > 0, 0.0, 1.0)),
    pixel_error=(fp + fn) / (tp + fp + fn + tn),
  )


def pooled(counts: dict) -> dict[str, jax.Array]:
  """Scores of the counts summed over the leading (image) axis."""
  return scores({k: np.sum(np.asarray(counts[k], np.int64)) for k in COUNTS})


def _surface(mask: np.ndarray) -> np.ndarray:
  """Foreground pixels with a 4-connected background neighbour (or the image edge)."""
  eroded = ndimage.binary_erosion(
    mask, structure=ndimage.generate_binary_structure(2, 1), border_value=0
  )
  return mask & ~eroded


def hausdorff(pred, gt, percentile: float | None = None, spacing=None) -> float:
  """Symmetric Hausdorff distance between the boundaries of two binary masks.

  Args:
    pred, gt: 2-D masks (foreground = nonzero).
    percentile: ``None`` for the maximum (HD); e.g. 95 for HD95, the larger of the
      two directed 95th percentiles (as MONAI and the medical decathlon compute it).
    spacing: pixel size per axis (default 1), so distances are in physical units.

  Returns:
    0.0 when both masks are empty; ``inf`` when exactly one is empty (a missed or
    hallucinated structure has no finite distance, and never scores 0).
  """
  pred, gt = np.asarray(pred) > 0, np.asarray(gt) > 0
  if pred.shape != gt.shape:
    raise ValueError(f"hausdorff: prediction shape {pred.shape} != ground truth {gt.shape}.")
  if not pred.any() and not gt.any():
    return 0.0
  if not pred.any() or not gt.any():
    return float("inf")
  sp, sg = _surface(pred), _surface(gt)
  # Distance of every pixel to the nearest surface pixel of the other mask.
  to_gt = ndimage.distance_transform_edt(~sg, sampling=spacing)[sp]
  to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)[sg]
  if percentile is None:
    return float(max(to_gt.max(), to_pred.max()))
  return float(max(np.percentile(to_gt, percentile), np.percentile(to_pred, percentile)))
