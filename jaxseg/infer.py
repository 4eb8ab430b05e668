"""Prediction of images and volumes of any size: one sliding-window inference over any
number of spatial axes, overlap-tile as its mode for valid-convolution networks,
test-time augmentation.

* **Sliding windows** (same-padded networks; volumes ``[X, Y, Z, C]`` and images
  ``[H, W, C]`` alike): windows of the patch size with a stride of at most
  ``(1 - overlap) * patch``, evenly spaced from the first voxel to flush with the end
  (nnU-Net's ``compute_steps_for_sliding_window``); each window's class probabilities
  are weighted and summed, the sum divided by the summed weights. Weights
  (``blend``): ``"gaussian"``, centred on the window with std ``patch / 8`` (nnU-Net:
  window borders, where the network sees least context, count least; volumes), or
  ``"hann"``, a separable Hann window lifted off zero (images). Windows are evaluated
  ``window_batch`` at a time in a ``lax.fori_loop`` that adds each into the output in
  place, so the working memory is the output and its weights plus one window batch,
  however large the input (``memory_analysis`` of the compiled function, tested).
  ``mirror``: the mean over the ``2^D`` flips of the spatial axes (nnU-Net's test-time
  mirroring). Inputs are zero-padded to a multiple of ``bucket`` per axis (and at least
  the patch) before the compiled function sees them, so inputs of similar size share
  one executable; an image no larger than the tile is one window (a whole-image pass).
* **Overlap-tile** (valid-convolution networks, ``unet_paper``): the U-Net paper's
  strategy. The image is mirrored at its borders by the network's margin, cut into
  input tiles whose output tiles cover the image exactly, and the outputs are placed
  side by side: the result equals the network on the whole mirrored image at once.

:class:`ImagePredictor` picks the mode of a 2-D model and averages over test-time
transforms (default none; the 8 dihedral ones; arbitrary rotations ``"rotate:DEG"``,
e.g. the U-Net paper's 7 rotated versions).
"""

import dataclasses
import functools
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from jaxseg.errors import UserError
from jaxseg.models.interface import decode, probabilities

# name -> (flip left-right first?, quarter turns)
_DIHEDRAL = {
  "identity": (False, 0),
  "rot90": (False, 1),
  "rot180": (False, 2),
  "rot270": (False, 3),
  "flip": (True, 0),
  "flip_rot90": (True, 1),
  "flip_rot180": (True, 2),
  "flip_rot270": (True, 3),
}
DIHEDRAL = tuple(_DIHEDRAL)


def logits_fn(model) -> Callable:
  """``fn(variables, x [B, *S, C]) -> logits`` of ``model`` in inference mode."""
  return lambda variables, x: decode(model.apply(variables, x, train=False)).logits


def make_tile_fn(model) -> Callable:
  """``fn(variables, tiles [B, H, W, C]) -> probabilities [B, H', W', K]`` (jitted)."""
  logits = logits_fn(model)
  return jax.jit(lambda variables, tiles: probabilities(logits(variables, tiles)))


def make_predict_fn(model, variables) -> Callable:
  """``fn(tiles) -> probabilities`` of ``model`` with ``variables``."""
  return functools.partial(make_tile_fn(model), variables)


def logits_of(prob: np.ndarray) -> np.ndarray:
  """Logits whose sigmoid/softmax gives ``prob`` back (for losses on tiled output)."""
  p = np.clip(prob, 1e-7, 1 - 1e-7)
  return np.log(p) - np.log1p(-p) if prob.shape[-1] == 1 else np.log(p)


def labels_of(prob: np.ndarray) -> np.ndarray:
  """Class map from probabilities ``[..., K]``: ``p > 0.5`` if ``K == 1``, else argmax."""
  return (
    (prob[..., 0] > 0.5).astype(np.uint8)
    if prob.shape[-1] == 1
    else prob.argmax(-1).astype(np.uint8)
  )


# Sliding windows, any number of spatial axes.


def gaussian_weight(patch, sigma_scale: float = 1 / 8) -> np.ndarray:
  """The importance map of a window: a Gaussian, max 1, floored at a small positive
  value so every voxel has weight."""
  axes = [np.arange(p, dtype=np.float64) - (p - 1) / 2 for p in patch]
  d2 = sum(
    (a.reshape([-1 if i == k else 1 for k in range(len(patch))]) / (p * sigma_scale)) ** 2
    for i, (a, p) in enumerate(zip(axes, patch, strict=True))
  )
  weight = np.exp(-0.5 * d2)
  weight /= weight.max()
  return np.maximum(weight, 1e-3).astype(np.float32)


def hann_weight(patch) -> np.ndarray:
  """Separable blending weights: a Hann window per axis, their product lifted off zero."""
  weight = np.ones((), np.float64)
  for p in patch:
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(p) + 0.5) / p)
    weight = np.multiply.outer(weight, hann)
  return (weight + 1e-3).astype(np.float32)


BLENDS = {"gaussian": gaussian_weight, "hann": hann_weight}


def window_starts(shape, patch, overlap: float) -> np.ndarray:
  """``[n, D]`` window corners covering ``shape`` (each axis: evenly spaced, first at 0,
  last flush with the end, stride at most ``(1 - overlap) * patch``)."""
  per_axis = []
  for size, p in zip(shape, patch, strict=True):
    if size <= p:
      per_axis.append([0])
      continue
    step = max(1, int(p * (1 - overlap)))
    n = int(np.ceil((size - p) / step)) + 1
    per_axis.append(np.round(np.linspace(0, size - p, n)).astype(int).tolist())
  return np.array(list(itertools.product(*per_axis)), np.int32)


def padded_shape(shape, patch, bucket: int) -> tuple:
  return tuple(int(max(p, -(-s // bucket) * bucket)) for s, p in zip(shape, patch, strict=True))


@dataclasses.dataclass(frozen=True)
class Windows:
  """A sliding window's settings: ``patch`` (its size per spatial axis), ``overlap``,
  ``window_batch`` (windows per network call), ``bucket`` (inputs padded to a multiple
  of it), ``mirror`` (test-time flips) and ``blend`` (:data:`BLENDS`)."""

  patch: tuple
  overlap: float = 0.5
  window_batch: int = 2
  bucket: int = 16
  mirror: bool = False
  blend: str = "gaussian"


def make_predictor(apply_fn, windows: Windows, num_classes: int):
  """A jitted ``predict(variables, x [*S, C], starts [n, D], valid [n]) -> [*S, K]``
  over ``D = len(windows.patch)`` spatial axes, ``n`` a multiple of ``window_batch``
  (starts with ``valid == 0`` count for nothing).

  ``apply_fn(variables, x [B, *patch, C]) -> logits``; ``K == 1``: sigmoid."""
  patch, window_batch = tuple(int(p) for p in windows.patch), windows.window_batch
  weight = jnp.asarray(BLENDS[windows.blend](patch))
  axes = tuple(range(1, len(patch) + 1))
  flips = (
    [()]
    if not windows.mirror
    else [a for r in range(len(axes) + 1) for a in itertools.combinations(axes, r)]
  )

  def probs_of(variables, x):
    total = 0.0
    for axes in flips:
      logits = apply_fn(variables, jnp.flip(x, axes) if axes else x)
      p = probabilities(logits)
      total = total + (jnp.flip(p, axes) if axes else p)
    return total / len(flips)

  @jax.jit
  def predict(variables, volume, starts, valid):
    out = jnp.zeros((*volume.shape[:-1], num_classes), jnp.float32)
    norm = jnp.zeros(volume.shape[:-1], jnp.float32)
    channels = volume.shape[-1]

    def body(i, carry):
      out, norm = carry
      batch_starts = jax.lax.dynamic_slice_in_dim(starts, i * window_batch, window_batch)
      batch_valid = jax.lax.dynamic_slice_in_dim(valid, i * window_batch, window_batch)
      windows = jax.vmap(lambda s: jax.lax.dynamic_slice(volume, (*s, 0), (*patch, channels)))(
        batch_starts
      )
      probs = probs_of(variables, windows)
      for j in range(window_batch):  # in place: each window added into the output
        s, w = batch_starts[j], weight * batch_valid[j]
        region = jax.lax.dynamic_slice(out, (*s, 0), (*patch, num_classes))
        out = jax.lax.dynamic_update_slice(out, region + probs[j] * w[..., None], (*s, 0))
        seen = jax.lax.dynamic_slice(norm, tuple(s), patch)
        norm = jax.lax.dynamic_update_slice(norm, seen + w, tuple(s))
      return out, norm

    out, norm = jax.lax.fori_loop(0, starts.shape[0] // window_batch, body, (out, norm))
    return out / jnp.maximum(norm, 1e-8)[..., None]

  return predict


def sliding_window(predict, variables, x: np.ndarray, windows: Windows) -> np.ndarray:
  """Probabilities ``[*S, K]`` of ``x`` ``[*S, C]`` (any size) by ``predict``
  (:func:`make_predictor` of the same ``windows``)."""
  shape = x.shape[:-1]
  inside = tuple(slice(0, s) for s in shape)
  full = padded_shape(shape, windows.patch, windows.bucket)
  padded = np.zeros((*full, x.shape[-1]), np.float32)
  padded[inside] = x
  starts = window_starts(full, windows.patch, windows.overlap)
  n = -(-len(starts) // windows.window_batch) * windows.window_batch
  valid = np.zeros(n, np.float32)
  valid[: len(starts)] = 1.0
  starts = np.concatenate([starts, np.repeat(starts[:1], n - len(starts), 0)])
  probs = predict(variables, jnp.asarray(padded), jnp.asarray(starts), jnp.asarray(valid))
  return np.asarray(probs)[inside]


# Overlap-tile (valid convolutions, 2-D).


def _run_tiles(predict_fn, tiles: np.ndarray, tile_batch: int) -> np.ndarray:
  outs = []
  for start in range(0, len(tiles), tile_batch):
    chunk = tiles[start : start + tile_batch]
    pad = tile_batch - len(chunk)
    if pad:  # keep one compiled shape
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    outs.append(np.asarray(predict_fn(chunk))[: tile_batch - pad])
  return np.concatenate(outs)


def margin_of(predict_fn, tile: int, channels: int) -> int:
  """Pixels a network loses per side at input side ``tile`` (0 for same padding)."""
  out = jax.eval_shape(predict_fn, jax.ShapeDtypeStruct((1, tile, tile, channels), jnp.float32))
  return (tile - out.shape[1]) // 2


def overlap_tile(
  predict_fn, image: np.ndarray, tile: int, tile_batch: int = 4, align: int = 16
) -> np.ndarray:
  """Valid-conv prediction ``[H, W, K]`` of ``image [H, W, C]``: mirrored context,
  output tiles side by side.

  Tiles start at multiples of ``align`` (``2 ** number of max-pools``), so every
  tile sees the pooling grid in the same phase as the whole image would; each tile
  contributes its first ``step`` output pixels, ``step`` the largest multiple of
  ``align`` not above its output side. Then the result equals a single pass over the
  whole mirrored image.
  """
  margin = margin_of(predict_fn, tile, image.shape[-1])
  step = (tile - 2 * margin) // align * align
  if step <= 0:
    raise UserError(f"overlap_tile: tile {tile} gives fewer than {align} output pixels.")
  h, w = image.shape[:2]
  ny, nx = -(-h // step), -(-w // step)
  padded = np.pad(
    image,
    (
      (margin, (ny - 1) * step + tile - margin - h),
      (margin, (nx - 1) * step + tile - margin - w),
      (0, 0),
    ),
    mode="symmetric",
  )
  tiles = np.stack(
    [
      padded[i * step : i * step + tile, j * step : j * step + tile]
      for i in range(ny)
      for j in range(nx)
    ]
  )
  out = _run_tiles(predict_fn, tiles, tile_batch)[:, :step, :step]
  rows = [np.concatenate(list(out[i * nx : (i + 1) * nx]), axis=1) for i in range(ny)]
  return np.concatenate(rows, axis=0)[:h, :w]


# Images: the mode of the model, test-time transforms.


def _transform(name: str, image: np.ndarray, inverse: bool = False) -> np.ndarray:
  if name.startswith("rotate:"):
    angle = float(name.split(":")[1]) * (-1 if inverse else 1)
    return ndimage.rotate(image, angle, axes=(0, 1), reshape=False, order=1, mode="reflect")
  if name not in _DIHEDRAL:
    raise UserError(f"unknown test-time transform {name!r}; known: {DIHEDRAL} or 'rotate:DEG'.")
  flip, turns = _DIHEDRAL[name]
  if not inverse:
    image = np.flip(image, axis=1) if flip else image
    return np.rot90(image, turns)
  image = np.rot90(image, -turns)
  return np.flip(image, axis=1) if flip else image


@dataclasses.dataclass(frozen=True)
class Tiling:
  """How :class:`ImagePredictor` covers an image (``config.infer``): ``tile`` (the
  input side of a tile or window), ``overlap`` (of sliding windows), ``tile_batch``
  (tiles per network call), ``tta`` (test-time transforms)."""

  tile: int
  overlap: float = 0.25
  tile_batch: int = 4
  tta: tuple = ("identity",)

  @classmethod
  def of(cls, infer_config) -> "Tiling":
    c = infer_config
    return cls(int(c.tile), float(c.overlap), int(c.tile_batch), tuple(c.tta))


class ImagePredictor:
  """``predictor(variables, image [H, W, C]) -> probabilities [H, W, K]`` of a 2-D
  ``model`` for images of any size, averaged over ``tiling.tta``: overlap-tile for a
  valid-convolution network, Hann-blended sliding windows of side ``tiling.tile``
  otherwise (an image no larger than the tile: one window). One executable per window
  shape and padded image size (a multiple of the model's stride)."""

  def __init__(self, model, tiling: Tiling):
    self.model, self.tiling, self._predictors = model, tiling, {}
    self._tile_fn, self._margin = make_tile_fn(model), None

  def mode(self, variables) -> str:
    """``"overlap-tile"`` (the network loses pixels at its borders) or ``"sliding window"``."""
    if self._margin is None:
      tiles = functools.partial(self._tile_fn, variables)
      self._margin = margin_of(tiles, self.tiling.tile, self.model.interface.in_channels)
    return "overlap-tile" if self._margin > 0 else "sliding window"

  def _run(self, variables, image):
    tiling, interface = self.tiling, self.model.interface
    if self.mode(variables) == "overlap-tile":
      tiles = functools.partial(self._tile_fn, variables)
      return overlap_tile(tiles, image, tiling.tile, tiling.tile_batch, interface.stride)
    stride = interface.stride
    patch = tuple(min(tiling.tile, -(-s // stride) * stride) for s in image.shape[:2])
    windows = Windows(patch, tiling.overlap, tiling.tile_batch, stride, blend="hann")
    if windows not in self._predictors:
      apply_fn = logits_fn(self.model)
      self._predictors[windows] = make_predictor(apply_fn, windows, interface.num_classes)
    return sliding_window(self._predictors[windows], variables, image, windows)

  def __call__(self, variables, image: np.ndarray) -> np.ndarray:
    total = None
    for name in self.tiling.tta:
      view = np.ascontiguousarray(_transform(name, image))
      prob = _transform(name, self._run(variables, view), inverse=True)
      total = prob if total is None else total + prob
    return total / len(self.tiling.tta)
