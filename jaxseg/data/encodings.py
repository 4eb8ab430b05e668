"""Mask encodings inferred from the masks themselves: which pixel values are which class.

:func:`infer` takes the histogram of every mask pixel value of a dataset and whether
any mask was stored lossily (JPEG), and returns the mapping ``value -> class`` with
the snapping threshold it needs:

* a few exact values (lossless masks, at most :data:`MAX_CLASSES`): two values are
  background and foreground (lower and higher), values ``0..K-1`` are class ids, other
  small sets of gray levels are classes in the order of their values;
* lossy masks (or many values clustered near a few levels): the levels are the
  histogram's dominant peaks (measured on JPEG-compressed masks: ringing spreads a
  few pixels over many values, the true levels hold most pixels around them), every
  other value snaps to the nearest one (threshold: half the smallest gap between
  levels), provided nearly every pixel lies close to a level;
* anything else (e.g. many unrelated gray levels) is ambiguous and refused, naming
  the settings that resolve it (``mask_values``, ``mask_threshold``).
"""

import dataclasses

import numpy as np

from jaxseg.errors import UserError

MAX_CLASSES = 16  # distinct exact values that can still be classes
PEAK_RADIUS = 16  # a level is the highest count within this many values
MIN_LEVEL_SHARE = 1e-3  # of all pixels, for a peak to be a level
LEVEL_NEIGHBOURHOOD_SHARE = 0.6  # of the pixels within PEAK_RADIUS values of a level
NEAR_LEVEL_SHARE = 0.95  # of all pixels within a quarter gap of a level (lossy masks)
ADVICE = (
  "set config.data.kwargs.mask_values (e.g. '((0, 0), (255, 1))') and, for lossily "
  "saved masks, config.data.kwargs.mask_threshold"
)


@dataclasses.dataclass(frozen=True)
class Encoding:
  mapping: tuple  # ((value, class), ...)
  threshold: int  # values within this distance of a mapped value snap to it
  text: str  # how it was chosen, for the log

  @property
  def classes(self) -> int:
    return max(c for _, c in self.mapping) + 1


def infer(counts: np.ndarray, lossy: bool) -> Encoding:
  """The encoding of masks whose pixel values have histogram ``counts`` (index =
  value); ``lossy``: some masks were stored lossily (JPEG)."""
  present = np.flatnonzero(counts)
  if not lossy and len(present) <= MAX_CLASSES:
    return _exact(present)
  return _levels(counts, "lossily stored" if lossy else f"{len(present)} distinct values")


def _exact(present: np.ndarray) -> Encoding:
  values = [int(v) for v in present]
  if len(values) <= 1:  # all empty (or all full): still a binary problem
    value = values[0] if values else 0
    mapping = ((0, 0), (255 if value in (0, 255) else value, 1))
    return Encoding(mapping, 0, f"one value ({value}) in every mask: binary {dict(mapping)}")
  if len(values) == 2:
    mapping = ((values[0], 0), (values[1], 1))
    return Encoding(mapping, 0, f"two values: background {values[0]}, foreground {values[1]}")
  mapping = tuple((v, i) for i, v in enumerate(values))
  kind = "class ids" if values == list(range(len(values))) else "gray levels, in order"
  return Encoding(mapping, 0, f"{len(values)} values as {kind}: {dict(mapping)}")


def _levels(counts: np.ndarray, why: str) -> Encoding:
  total = counts.sum()
  padded = np.pad(counts, PEAK_RADIUS)
  windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * PEAK_RADIUS + 1)
  # A level is the highest count around it, holds most of its neighbourhood's pixels
  # (JPEG ringing spreads a few pixels over many values) and is not negligible.
  dominant = (counts == windows.max(1)) & (counts > LEVEL_NEIGHBOURHOOD_SHARE * windows.sum(1))
  peaks = np.flatnonzero(dominant & (counts >= MIN_LEVEL_SHARE * total))
  levels = _dedupe(peaks)
  if len(levels) < 2:
    raise UserError(
      f"masks ({why}) are ambiguous: no two distinct levels to be background and "
      f"foreground; {ADVICE}."
    )
  gap = int(np.diff(levels).min())
  distance = np.abs(np.arange(len(counts))[:, None] - levels).min(1)
  near = counts[distance <= gap // 4].sum() / total
  if len(levels) > MAX_CLASSES or near < NEAR_LEVEL_SHARE:
    raise UserError(
      f"masks ({why}) are ambiguous: {len(levels)} levels {levels.tolist()[:10]}, "
      f"{100 * near:.1f}% of pixels near one; {ADVICE}."
    )
  mapping = tuple((int(v), i) for i, v in enumerate(levels))
  threshold = gap // 2
  text = (
    f"{why}: levels {dict(mapping)}, values within {threshold} snapped to the nearest "
    f"({100 * near:.1f}% of pixels within {gap // 4})"
  )
  return Encoding(mapping, threshold, text)


def _dedupe(peaks: np.ndarray) -> np.ndarray:
  """Peaks of equal height closer than the radius (a flat top) count once."""
  kept = []
  for p in peaks:
    if not kept or p - kept[-1] > PEAK_RADIUS:
      kept.append(int(p))
  return np.asarray(kept)
