"""Prediction on images of any size: overlap-tile and sliding-window inference, TTA.

* Valid-convolution networks (``unet_paper``) use the U-Net paper's overlap-tile
  strategy: the image is mirrored at its borders by the network's margin, cut into
  input tiles whose output tiles cover the image exactly, and the outputs are placed
  side by side. The result equals what the network would give on the whole mirrored
  image at once.
* Same-padded networks use overlapping tiles whose probabilities are blended with a
  smooth (Hann-like) window, which hides the tiles' border effects.

Tiles go through the network ``tile_batch`` at a time, so device memory is bounded
by the tile batch, not by the image. Test-time augmentation averages the
probabilities over a set of transforms (default the 8 dihedral ones; arbitrary
rotations ``"rotate:DEG"``, e.g. the U-Net paper's 7 rotated versions).
"""

import functools
from collections.abc import Callable, Sequence

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


def make_tile_fn(model) -> Callable:
  """``fn(variables, tiles [B, H, W, C]) -> probabilities [B, H', W', K]`` (jitted)."""

  @jax.jit
  def fn(variables, tiles):
    return probabilities(decode(model.apply(variables, tiles, train=False)).logits)

  return fn


def make_predict_fn(model, variables) -> Callable:
  """``fn(tiles) -> probabilities`` of ``model`` with ``variables``."""
  return functools.partial(make_tile_fn(model), variables)


def logits_of(prob: np.ndarray) -> np.ndarray:
  """Logits whose sigmoid/softmax gives ``prob`` back (for losses on tiled output)."""
  p = np.clip(prob, 1e-7, 1 - 1e-7)
  return np.log(p) - np.log1p(-p) if prob.shape[-1] == 1 else np.log(p)


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


def _window(size: int) -> np.ndarray:
  """Separable blending weights: a Hann window lifted off zero at the edges."""
  hann = 0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(size) + 0.5) / size)
  return np.outer(hann, hann) + 1e-3


def sliding_window(
  predict_fn, image: np.ndarray, tile: int, overlap: float = 0.25, tile_batch: int = 4
) -> np.ndarray:
  """Same-padded prediction ``[H, W, K]``: overlapping tiles blended smoothly.

  An image no larger than ``tile`` is predicted whole (one tile, no blending)."""
  h, w = image.shape[:2]
  if h <= tile and w <= tile:
    return np.asarray(predict_fn(image[None]))[0]
  th, tw = min(tile, h), min(tile, w)
  stride = max(1, int(tile * (1 - overlap)))
  ys = sorted({*range(0, h - th + 1, stride), h - th})
  xs = sorted({*range(0, w - tw + 1, stride), w - tw})
  tiles = np.stack([image[y : y + th, x : x + tw] for y in ys for x in xs])
  out = _run_tiles(predict_fn, tiles, tile_batch)
  weight = _window(max(th, tw))[:th, :tw, None]
  total = np.zeros((h, w, out.shape[-1]), np.float32)
  norm = np.zeros((h, w, 1), np.float32)
  for (y, x), prob in zip([(y, x) for y in ys for x in xs], out, strict=True):
    total[y : y + th, x : x + tw] += prob * weight
    norm[y : y + th, x : x + tw] += weight
  return total / norm


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


def predict(
  predict_fn,
  image: np.ndarray,
  *,
  tile: int,
  valid: bool,
  overlap: float = 0.25,
  tile_batch: int = 4,
  tta: Sequence[str] = ("identity",),
  align: int = 16,
) -> np.ndarray:
  """Probabilities ``[H, W, K]`` of an image of any size, averaged over ``tta``.

  ``align``: for valid-conv networks, ``2 ** number of max-pools`` (see
  :func:`overlap_tile`)."""
  run = (
    functools.partial(overlap_tile, predict_fn, tile=tile, tile_batch=tile_batch, align=align)
    if valid
    else functools.partial(
      sliding_window, predict_fn, tile=tile, overlap=overlap, tile_batch=tile_batch
    )
  )
  total = None
  for name in tta:
    prob = _transform(name, run(np.ascontiguousarray(_transform(name, image))), inverse=True)
    total = prob if total is None else total + prob
  return total / len(tta)


def labels_of(prob: np.ndarray) -> np.ndarray:
  """Class map from probabilities ``[H, W, K]``: ``p > 0.5`` if ``K == 1``, else argmax."""
  return (
    (prob[..., 0] > 0.5).astype(np.uint8)
    if prob.shape[-1] == 1
    else prob.argmax(-1).astype(np.uint8)
  )
