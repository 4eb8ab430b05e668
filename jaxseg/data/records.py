"""The example schema every dataset writes, and the checks it must pass.

An example is a dict with ``image`` ``uint8 [H, W, C]``, ``mask`` ``uint8 [H, W]``
(class indices), ``annotators`` ``uint8 [A, H, W]`` (several raters' masks; ``A``
may be 1) and ``site`` ``int32`` (acquisition site, for non-IID federated clients).
Arrays are stored zlib-compressed (``tfds.features.Tensor``), which needs no
TensorFlow to write or read.
"""

import dataclasses
import hashlib
import json

import numpy as np
import tensorflow_datasets as tfds

from jaxseg.errors import UserError


class Prepared:
  """What TFDS says about a builder jaxseg fills from local files or generates: it is
  prepared, not downloaded (TFDS's own lines speak of downloads and unknown sizes)."""

  def _log_download_bytes(self) -> None:
    print(f"Preparing dataset {self.name} in {self.data_dir} (once; later runs reuse it).")

  def _log_download_done(self) -> None:
    pass


def features(height: int, width: int, channels: int, annotators: int) -> tfds.features.FeaturesDict:
  tensor = lambda shape: tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding="zlib")  # noqa: E731
  return tfds.features.FeaturesDict(
    {
      "image": tensor((height, width, channels)),
      "mask": tensor((height, width)),
      "annotators": tensor((annotators, height, width)),
      "site": tfds.features.Scalar(dtype=np.int32),
    }
  )


def check_pair(image: np.ndarray, mask: np.ndarray, where: str) -> None:
  """Raises if ``mask`` does not cover ``image`` pixel for pixel."""
  if image.shape[:2] != mask.shape[:2]:
    raise UserError(
      f"{where}: mask size {mask.shape[:2]} does not match image size "
      f"{image.shape[:2]} (height, width)."
    )


def settings(cls, kwargs: dict, dataset: str):
  """``cls(**kwargs)`` for a settings dataclass; unknown keys name the known ones."""
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(kwargs) - known)
  if unknown:
    raise UserError(
      f"config.data.kwargs: unknown {dataset} settings {unknown}; known: {sorted(known)}."
    )
  return cls(**kwargs)


def settings_hash(settings: dict) -> str:
  """A short stable hash of a builder's settings, used to name its cache folder."""
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]
