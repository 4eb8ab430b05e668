"""``synthetic_nerve3d``: the built-in volume dataset, generated (no download).

The nerve of ``synthetic_nerve`` becomes a tube through the volume: a bright tube of
varying radius winding along the last axis, among a dimmer distractor tube and a
blob, on a smooth speckled background; labels {0 background, 1 nerve}. Case ``i`` is
drawn from ``default_rng([seed, i])``; spacing 1 mm, identity affine. Splits as
``msd``: ``folds`` folds by case, fold ``fold`` the test split.
"""

import dataclasses

import numpy as np
from scipy import ndimage

from jaxseg.data import msd
from jaxseg.data.volumes import Meta


@dataclasses.dataclass(frozen=True)
class Settings:
  """``config.data.kwargs`` of ``synthetic_nerve3d``.

  Attributes:
    shape: voxels per case ``(x, y, z)``; the tube runs along z.
    num_cases: cases in all (split into folds).
    difficulty: 0..1; more speckle, lower tube contrast.
    folds, fold, validation_fraction, seed: as for ``msd``.
  """

  shape: tuple = (32, 32, 24)
  num_cases: int = 40
  difficulty: float = 0.5
  folds: int = 5
  fold: int = 0
  validation_fraction: float = 0.1
  seed: int = 0


def tube(shape, rng, radius_range) -> np.ndarray:
  """A winding tube along the last axis (boolean mask)."""
  x, y, z = (np.arange(s, dtype=np.float32) for s in shape)
  t = z / max(shape[2] - 1, 1)
  phase, freq = rng.uniform(0, 2 * np.pi, 2), rng.uniform(0.5, 1.5, 2)
  cx = shape[0] * (
    0.5 + 0.25 * rng.uniform(-1, 1) + 0.15 * np.sin(2 * np.pi * freq[0] * t + phase[0])
  )
  cy = shape[1] * (
    0.5 + 0.25 * rng.uniform(-1, 1) + 0.15 * np.sin(2 * np.pi * freq[1] * t + phase[1])
  )
  radius = rng.uniform(*radius_range) * (1 + 0.2 * np.sin(2 * np.pi * t + rng.uniform(0, 6)))
  d2 = (x[:, None, None] - cx) ** 2 + (y[None, :, None] - cy) ** 2
  return d2 <= radius**2


def make_case(settings: Settings, index: int):
  """``(image [x, y, z, 1] float32, labels [x, y, z] uint8)`` of case ``index``."""
  rng = np.random.default_rng([settings.seed, index])
  shape, hard = tuple(settings.shape), settings.difficulty
  nerve = tube(shape, rng, (2.0, 3.5))
  distractor = tube(shape, rng, (1.5, 2.5)) & ~nerve
  background = ndimage.gaussian_filter(rng.normal(size=shape), 3.0) * 4.0
  image = background + (1.6 - hard) * nerve + 0.6 * distractor
  blob = np.zeros(shape, bool)
  blob[tuple(rng.integers(0, s) for s in shape)] = True
  image += 0.8 * ndimage.binary_dilation(blob, iterations=3)
  image += (0.2 + 0.6 * hard) * rng.normal(size=shape)
  image = (image - image.mean()) / image.std()
  return image[..., None].astype(np.float32), nerve.astype(np.uint8)


def load(source_dir, cache_dir, **kwargs) -> msd.VolumeData:
  """Generates every case (fast: no cache)."""
  del source_dir, cache_dir
  settings = Settings(**kwargs)
  shape = tuple(int(s) for s in settings.shape)
  cases = {}
  for i in range(settings.num_cases):
    image, labels = make_case(settings, i)
    meta = Meta(shape, np.eye(4), (1.0, 1.0, 1.0), np.array([[0, 1], [1, 1], [2, 1]]), shape,
                ((0, 0, 0), shape))  # fmt: skip
    cases[f"case_{i:03d}"] = {"image": image, "labels": labels, "meta": meta}
  plan = dict(
    modalities=["synthetic"],
    labels={"0": "background", "1": "nerve"},
    target_spacing=[1.0, 1.0, 1.0],
    ct_statistics=None,
    median_shape=list(shape),
    max_shape=list(shape),
  )
  splits = msd.split_cases(
    sorted(cases), settings.folds, settings.fold, settings.validation_fraction, settings.seed
  )
  return msd.VolumeData(plan, cases, splits)
