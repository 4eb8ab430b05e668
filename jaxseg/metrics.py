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

Multi-class runs score every foreground class (:func:`class_counts`; per image
``class_tp`` ... ``[N, K-1]``); their ``dice`` is the mean over classes, and the
foreground union (all classes merged, :func:`confusion`) is kept as ``dice_fg``.

Distance metrics (:func:`hausdorff`) are computed on the host with scipy. One
convention for a missed or hallucinated structure (exactly one mask empty), images
and volumes alike: its distance is infinite, averaged as the largest distance possible
in that image or volume (its diagonal, :func:`bounded`), and counted
(``<metric>_missed``).
"""

import functools
import heapq

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from jaxseg.errors import UserError

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


def class_counts(pred, gt, num_classes: int, batched: bool = False) -> dict[str, jax.Array]:
  """Confusion counts of every foreground class ``1 .. K-1`` (a binary model's class 1),
  last axis ``K-1``, summed over the spatial axes (all axes, or all but the first with
  ``batched``: per image). :func:`scores` of them are the per-class scores; their mean
  over classes is a multi-class run's ``dice``."""
  pred, gt = jnp.asarray(pred), jnp.asarray(gt)
  classes = jnp.arange(1, max(num_classes, 2))
  p, g = pred[..., None] == classes, gt[..., None] == classes
  axes = tuple(range(1 if batched else 0, pred.ndim))
  count = lambda m: jnp.sum(m, axis=axes, dtype=jnp.int32)  # noqa: E731
  return dict(tp=count(p & g), fp=count(p & ~g), fn=count(~p & g), tn=count(~p & ~g))


def _ratio(num, den, empty_value):
  num, den = jnp.asarray(num, jnp.float32), jnp.asarray(den, jnp.float32)
  return jnp.where(den > 0, num / jnp.maximum(den, 1), empty_value)


def scores(counts: dict) -> dict[str, jax.Array]:
  """Dice (= F1), IoU, mIoU (mean of the background and foreground IoUs), precision,
  recall and pixel error from counts (any leading shape)."""
  tp, fp, fn, tn = (jnp.asarray(counts[k], jnp.float32) for k in COUNTS)
  iou = _ratio(tp, tp + fp + fn, 1.0)
  return dict(
    dice=_ratio(2 * tp, 2 * tp + fp + fn, 1.0),
    iou=iou,
    miou=(iou + _ratio(tn, tn + fp + fn, 1.0)) / 2,
    precision=_ratio(tp, tp + fp, jnp.where(fn > 0, 0.0, 1.0)),
    recall=_ratio(tp, tp + fn, jnp.where(fp > 0, 0.0, 1.0)),
    pixel_error=(fp + fn) / (tp + fp + fn + tn),
  )


def pooled(counts: dict) -> dict[str, jax.Array]:
  """Scores of the counts summed over the leading (image) axis."""
  return scores({k: np.sum(np.asarray(counts[k], np.int64)) for k in COUNTS})


def class_scores(per_image: dict) -> tuple[dict, dict]:
  """``(per image [N, K-1], pooled [K-1])`` scores of each foreground class from the
  per-image ``class_tp`` ... counts of :func:`class_counts`."""
  counts = {k: np.asarray(per_image[f"class_{k}"], np.int64) for k in COUNTS}
  per = {k: np.asarray(v) for k, v in scores(counts).items()}
  total = {k: v.sum(0) for k, v in counts.items()}
  return per, {k: np.asarray(v) for k, v in scores(total).items()}


def mean_std(values, pooled=None) -> dict:
  """One metric of ``test_metrics.json``, images and volumes alike: ``{mean, std}`` over
  the cases (images or volumes) and ``pooled`` (the score of the summed counts, or None)."""
  values = np.asarray(values, np.float64)
  return {"mean": float(values.mean()), "std": float(values.std()), "pooled": pooled}


def bounded(distances, extent: float) -> np.ndarray:
  """``distances`` with the infinite ones (exactly one mask empty) replaced by
  ``extent``, the largest distance possible (the image's or volume's diagonal)."""
  distances = np.asarray(distances, np.float64)
  return np.where(np.isfinite(distances), distances, extent)


def _surface(mask: np.ndarray) -> np.ndarray:
  """Foreground pixels (voxels) with a face-connected background neighbour (or the
  edge): 4-connected in 2-D, 6-connected in 3-D."""
  eroded = ndimage.binary_erosion(
    mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0
  )
  return mask & ~eroded


def surface_distances(pred, gt, spacing=None) -> tuple[np.ndarray, np.ndarray]:
  """``(pred surface -> gt surface, gt surface -> pred surface)``: the distance of every
  boundary pixel/voxel of one mask to the nearest boundary point of the other, in the
  units of ``spacing`` (both masks non-empty, any number of dimensions)."""
  sp, sg = _surface(np.asarray(pred) > 0), _surface(np.asarray(gt) > 0)
  to_gt = ndimage.distance_transform_edt(~sg, sampling=spacing)[sp]
  to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)[sg]
  return to_gt, to_pred


def _empty_cases(pred, gt, both: float, one: float) -> float | None:
  pred, gt = np.asarray(pred) > 0, np.asarray(gt) > 0
  if pred.shape != gt.shape:
    raise UserError(f"prediction shape {pred.shape} != ground truth {gt.shape}.")
  if not pred.any() and not gt.any():
    return both
  if not pred.any() or not gt.any():
    return one
  return None


def average_surface_distance(pred, gt, spacing=None) -> float:
  """Symmetric average surface distance: the mean over both masks' boundary points of
  the distance to the other boundary. 0 when both are empty, ``inf`` when one is."""
  empty = _empty_cases(pred, gt, 0.0, float("inf"))
  if empty is not None:
    return empty
  return _asd(*surface_distances(pred, gt, spacing))


def _asd(to_gt, to_pred) -> float:
  return float((to_gt.sum() + to_pred.sum()) / (to_gt.size + to_pred.size))


def _nsd(to_gt, to_pred, tolerance: float) -> float:
  close = np.sum(to_gt <= tolerance) + np.sum(to_pred <= tolerance)
  return float(close / (to_gt.size + to_pred.size))


def _hd(to_gt, to_pred, percentile: float | None) -> float:
  if percentile is None:
    return float(max(to_gt.max(), to_pred.max()))
  return float(max(np.percentile(to_gt, percentile), np.percentile(to_pred, percentile)))


def surface_scores(pred, gt, tolerance: float, spacing=None) -> dict:
  """``{hd, hd95, asd, nsd}`` of two binary masks, as :func:`hausdorff` (the maximum and
  the 95th percentile), :func:`average_surface_distance` and
  :func:`normalized_surface_dice` compute them, from one computation of their surface
  distances."""
  empty = _empty_cases(pred, gt, 0.0, float("inf"))
  if empty is not None:
    return {"hd": empty, "hd95": empty, "asd": empty, "nsd": 1.0 if empty == 0.0 else 0.0}
  to_gt, to_pred = surface_distances(pred, gt, spacing)
  return {
    "hd": _hd(to_gt, to_pred, None),
    "hd95": _hd(to_gt, to_pred, 95),
    "asd": _asd(to_gt, to_pred),
    "nsd": _nsd(to_gt, to_pred, tolerance),
  }


def normalized_surface_dice(pred, gt, tolerance: float, spacing=None) -> float:
  """Normalized surface Dice at ``tolerance`` (Nikolov et al. 2021; Metrics Reloaded):
  the fraction of both boundaries lying within ``tolerance`` of the other, counted over
  boundary voxels (as MONAI's ``compute_surface_dice``). 1 when both masks are empty,
  0 when exactly one is."""
  empty = _empty_cases(pred, gt, 1.0, 0.0)
  if empty is not None:
    return empty
  return _nsd(*surface_distances(pred, gt, spacing), tolerance)


def hausdorff(pred, gt, percentile: float | None = None, spacing=None) -> float:
  """Symmetric Hausdorff distance between the boundaries of two binary masks.

  Args:
    pred, gt: 2-D or 3-D masks (foreground = nonzero).
    percentile: ``None`` for the maximum (HD); e.g. 95 for HD95, the larger of the
      two directed 95th percentiles (as MONAI and the medical decathlon compute it).
    spacing: pixel size per axis (default 1), so distances are in physical units.

  Returns:
    0.0 when both masks are empty; ``inf`` when exactly one is empty (a missed or
    hallucinated structure has no finite distance, and never scores 0).
  """
  empty = _empty_cases(pred, gt, 0.0, float("inf"))
  if empty is not None:
    return empty
  return _hd(*surface_distances(pred, gt, spacing), percentile)


def rand_error(pred, gt) -> float:
  """ISBI 2012's Rand error: 1 − the foreground-restricted Rand F-score.

  Both binary maps (foreground = cell interior, label > 0) are turned into segments
  by 4-connected components. Over ordered pairs of pixels (self-pairs included) that
  are ground-truth foreground: a pair is "together" in the ground truth if both lie
  in one segment; in the prediction likewise, where a pixel the prediction marks as
  background is a segment of its own. Precision = pairs together in both / pairs
  together in the prediction, recall = ... / pairs together in the ground truth,
  F = 2PR / (P + R). This is the challenge's adapted Rand index (as in
  ``skimage.metrics.adapted_rand_error``) on connected components.
  """
  pred_seg = ndimage.label(np.asarray(pred) > 0)[0]
  gt_seg = ndimage.label(np.asarray(gt) > 0)[0]
  inside = gt_seg > 0
  if not inside.any():
    raise UserError("rand_error: the ground truth has no foreground pixel.")
  g, p = gt_seg[inside], pred_seg[inside]
  pairs_of = lambda labels: np.unique(labels, return_counts=True)[1]  # noqa: E731
  alone = np.sum(p == 0)  # predicted background: singletons
  labeled = np.unique(np.stack([g[p > 0], p[p > 0]]), axis=1, return_counts=True)[1]
  both = np.sum(labeled.astype(np.float64) ** 2) + alone
  together_pred = np.sum(pairs_of(p[p > 0]).astype(np.float64) ** 2) + alone
  together_gt = np.sum(pairs_of(g).astype(np.float64) ** 2)
  precision, recall = both / together_pred, both / together_gt
  return float(1.0 - 2 * precision * recall / (precision + recall))


_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


@functools.cache
def _simple_point_table() -> np.ndarray:
  """For each of the 256 configurations of the 8 neighbours, whether the centre is a
  simple point for 8-connected foreground and 4-connected background: flipping it
  changes no topology (one 8-component of foreground neighbours touching it and
  one 4-component of background neighbours 4-adjacent to it; Bertrand's T8 = T4 = 1).
  """
  table = np.zeros(256, bool)
  eight = np.ones((3, 3), bool)
  four = ndimage.generate_binary_structure(2, 1)
  for code in range(256):
    patch = np.zeros((3, 3), bool)
    for bit, (dy, dx) in enumerate(_OFFSETS):
      patch[1 + dy, 1 + dx] = bool(code >> bit & 1)
    fg = ndimage.label(patch, eight)[0]
    t8 = len(set(fg[patch].tolist()))
    bg_mask = ~patch
    bg_mask[1, 1] = False
    bg = ndimage.label(bg_mask, four)[0]
    t4 = len({bg[1 + dy, 1 + dx] for dy, dx in ((-1, 0), (0, 1), (1, 0), (0, -1))} - {0})
    table[code] = t8 == 1 and t4 == 1
  return table


def _neighbour_codes(padded: np.ndarray) -> np.ndarray:
  """The 8-bit code of every interior pixel's neighbours (bit i: ``_OFFSETS[i]``)."""
  h, w = padded.shape[0] - 2, padded.shape[1] - 2
  codes = np.zeros((h, w), np.int64)
  for bit, (dy, dx) in enumerate(_OFFSETS):
    codes |= padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w].astype(np.int64) << bit
  return codes


def warping_error(pred, gt) -> float:
  """ISBI 2012's warping error (Jain et al. 2010): the fraction of pixels at which
  the prediction still differs from the ground truth after the prediction has been
  warped toward the ground truth by flipping simple points only (flips that change no
  topology: no split, merge, hole or new object). Differences of boundary position
  are forgiven; topological errors (splits, merges) are counted. (Jain et al. warp
  the ground truth toward the prediction; jaxseg warps the prediction, as the
  challenge describes it; both agree on the examples in the tests.)
  """
  simple = _simple_point_table()
  target = np.asarray(gt) > 0
  warped = np.pad(np.asarray(pred) > 0, 1)  # background border: the image edge is outside
  shape, width = warped.shape, warped.shape[1]
  neighbours = tuple(enumerate(dy * width + dx for dy, dx in _OFFSETS))
  cells = bytearray(warped.astype(np.uint8).tobytes())  # fast single-pixel access
  changed = True
  while changed:  # sweeps in raster order; a flip is seen by the pixels after it
    changed = False
    warped = np.frombuffer(bytes(cells), np.uint8).reshape(shape).astype(bool)
    differs = np.pad(warped[1:-1, 1:-1] != target, 1)
    # Only pixels simple as the sweep starts, or with a neighbour flipped before
    # their turn, can flip in this sweep: visit just those, in raster order.
    queue = np.flatnonzero(differs & np.pad(simple[_neighbour_codes(warped)], 1)).tolist()
    queued, differs = set(queue), differs.ravel().tolist()
    while queue:
      r = heapq.heappop(queue)
      code = 0
      for bit, d in neighbours:
        code |= cells[r + d] << bit
      if simple[code]:
        cells[r] ^= 1
        changed = True
        for _, d in neighbours:
          n = r + d
          if n > r and differs[n] and n not in queued:
            heapq.heappush(queue, n)
            queued.add(n)
  return float(np.mean(warped[1:-1, 1:-1] != target))


def pairwise_distance(a, b) -> jax.Array:
  """``d = 1 - IoU`` for every pair of masks ``a [m, H, W]`` and ``b [n, H, W]``:
  ``[m, n]``. Two empty masks are at distance 0 (the IoU convention above)."""
  a = jnp.asarray(a).reshape(jnp.shape(a)[0], -1) > 0
  b = jnp.asarray(b).reshape(jnp.shape(b)[0], -1) > 0
  inter = jnp.einsum("mp,np->mn", a.astype(jnp.float32), b.astype(jnp.float32))
  union = a.sum(-1)[:, None] + b.sum(-1)[None, :] - inter
  return 1.0 - _ratio(inter, union, 1.0)


def ged(samples, annotations) -> jax.Array:
  """Generalized energy distance ``2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]`` with
  ``d = 1 - IoU`` between model samples ``[m, H, W]`` and annotations ``[n, H, W]``
  (bool or {0, 1}); every expectation is over all pairs including ``i = j`` (as Kohl
  et al. compute it). One sample against one identical annotation gives 0, against a
  disjoint one 2; an empty mask against an empty one is at distance 0, against a
  non-empty one at distance 1.
  """
  cross = pairwise_distance(samples, annotations).mean()
  return (
    2 * cross
    - pairwise_distance(samples, samples).mean()
    - (pairwise_distance(annotations, annotations).mean())
  )


def diversity(samples) -> jax.Array:
  """Sample diversity: the mean pairwise ``d = 1 - IoU`` of the samples (all pairs
  including ``i = j``, the ``E[d(S, S')]`` term of :func:`ged`)."""
  return pairwise_distance(samples, samples).mean()
