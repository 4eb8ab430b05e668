"""Reading datasets from a user's directory: files, checks, resizing, the TFDS builder.

Every directory-based dataset lists its examples as :class:`Item` records (image
file, mask file(s) and how to read them) and hands them to :class:`FolderBuilder`,
which validates and converts each one into the schema of :mod:`jaxseg.data.records`.
The prepared data lives in the cache under a name that hashes the builder settings
*and the bytes of every source file*, so editing, adding or removing a file (or a
setting) prepares the data anew; nothing is written into the user's directory.
"""

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from jaxseg.data import records
from jaxseg.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def require_dir(path: str | None, dataset: str) -> str:
  if not path:
    raise UserError(f"dataset {dataset!r} is read from a directory: set config.data.dir.")
  if not os.path.isdir(path):
    raise UserError(f"dataset {dataset!r}: data directory {path!r} does not exist.")
  return path


def list_images(folder: str) -> dict[str, str]:
  """``{stem: path}`` of the image files in ``folder`` (raises on a missing folder)."""
  if not os.path.isdir(folder):
    raise UserError(f"expected a folder of images at {folder!r}; it does not exist.")
  files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
  return {os.path.splitext(f)[0]: os.path.join(folder, f) for f in files}


def read_image(path: str, channels: int = 1) -> np.ndarray:
  """uint8 ``[H, W, channels]`` (gray or RGB); raises naming the file if unreadable."""
  try:
    with Image.open(path) as img:
      img.load()
      raw = np.asarray(img) if img.mode in ("F", "I") else None  # float / int32 pixels
      array = np.asarray(img.convert("L" if channels == 1 else "RGB"))
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: cannot read the image ({e}).") from e
  bad = 0 if raw is None else int(raw.size - np.isfinite(raw.astype(np.float64)).sum())
  if bad:
    raise UserError(f"{path}: {bad:,} non-finite pixel value(s) (NaN or Inf); fix or remove it.")
  return array[..., None] if channels == 1 else array


GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def image_info(path: str) -> tuple[tuple[int, int], str, bool]:
  """``((height, width), PIL mode, gray)`` of an image file; an RGB or palette image
  whose channels agree everywhere counts as gray."""
  try:
    with Image.open(path) as img:
      img.load()
      gray = img.mode in GRAY_MODES
      if not gray:
        rgb = np.asarray(img.convert("RGB"))
        gray = bool(np.all(rgb == rgb[..., :1]))
      return (img.height, img.width), img.mode, gray
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: cannot read the image ({e}).") from e


def mask_info(path: str) -> tuple[np.ndarray, str, bool]:
  """``(pixel values as depicted, PIL mode, stored lossily)`` of a mask file."""
  try:
    with Image.open(path) as img:
      img.load()
      return _mask_pixels(img, path).astype(np.int64), img.mode, img.format == "JPEG"
  except UserError:
    raise
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: cannot read the mask ({e}).") from e


def read_mask(path: str, mapping: dict[int, int], threshold: int = 0) -> np.ndarray:
  """Class map uint8 ``[H, W]`` from a mask file whose pixel values ``mapping`` maps.

  ``threshold`` > 0 snaps values within that distance of a mapped value (lossy JPEG
  masks); any other value is an error naming the file and the values found.
  """
  try:
    with Image.open(path) as img:
      img.load()
      raw = _mask_pixels(img, path)
  except (OSError, ValueError) as e:
    if isinstance(e, UserError):
      raise
    raise UserError(f"{path}: cannot read the mask ({e}).") from e
  return map_values(raw.astype(np.int64), mapping, threshold, path)


def _mask_pixels(img: Image.Image, path: str) -> np.ndarray:
  """A mask's values as it depicts them: a 1-bit mask is black (0) and white (255),
  a palette mask its indices, an RGB mask whose channels agree its gray levels."""
  if img.mode in ("L", "P", "I", "I;16"):
    return np.asarray(img)
  if img.mode == "1":
    return np.asarray(img.convert("L"))
  rgb = np.asarray(img.convert("RGB"))
  if np.any(rgb != rgb[..., :1]):
    raise UserError(
      f"{path}: a colour mask (mode {img.mode}, channels differ); save masks as gray "
      "levels or palette indices, one value per class."
    )
  return rgb[..., 0]


def map_values(raw: np.ndarray, mapping: dict[int, int], threshold: int, where: str) -> np.ndarray:
  keys = np.array(sorted(mapping))
  nearest = keys[np.abs(raw[..., None] - keys).argmin(-1)]
  bad = np.abs(nearest - raw) > threshold
  if bad.any():
    found = sorted(set(np.unique(raw[bad]).tolist()))
    # Many values around the mapped ones: lossy (JPEG) compression, not classes.
    hint = (
      "the mask looks lossily compressed (JPEG): set config.data.kwargs.mask_threshold, "
      "e.g. 64, to snap values to the nearest mapped one"
      if len(found) > 8
      else "set config.data.kwargs.mask_values"
    )
    raise UserError(
      f"{where}: mask values {found[:10]}{' ...' if len(found) > 10 else ''} are not in the "
      f"mapping {dict(mapping)} (threshold {threshold}); {hint}."
    )
  classes = np.array([mapping[k] for k in keys], np.uint8)
  return classes[np.searchsorted(keys, nearest)]


def fit(
  image: np.ndarray, mask: np.ndarray, size: Sequence[int] | None, mode: str, where: str
) -> tuple[np.ndarray, np.ndarray]:
  """Checks the pair and brings it to ``size`` (``resize`` or zero-``pad``)."""
  records.check_pair(image, mask, where)
  if not size:
    return image, mask
  h, w = size
  if mode == "resize":
    channels = image.shape[-1]
    img = Image.fromarray(image[..., 0] if channels == 1 else image)
    image = np.asarray(img.resize((w, h), Image.BILINEAR)).reshape(h, w, channels)
    mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
    return image, mask
  if mode == "pad":
    if image.shape[0] > h or image.shape[1] > w:
      raise UserError(
        f"{where}: image {image.shape[:2]} is larger than the pad size {size}; use resize mode."
      )
    pads = ((0, h - image.shape[0]), (0, w - image.shape[1]))
    return np.pad(image, (*pads, (0, 0))), np.pad(mask, pads)
  raise UserError(f"config.data.kwargs.resize_mode: expected 'resize' or 'pad', found {mode!r}.")


@dataclasses.dataclass(frozen=True)
class Item:
  """One example: the files it is read from and the function that reads them.

  ``read(item) -> (image uint8 [H, W, C], masks uint8 [A, H, W], site)``.
  """

  key: str
  files: tuple[str, ...]
  read: Callable


def fingerprint(settings: dict, items: Sequence[Item]) -> str:
  """Hash of the settings and of the bytes of every source file."""
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
  for item in items:
    for path in item.files:
      digest.update(path.encode())
      with open(path, "rb") as f:
        digest.update(hashlib.sha256(f.read()).digest())
  return digest.hexdigest()[:12]


class FolderBuilder(records.Prepared, tfds.core.GeneratorBasedBuilder):
  """Writes :class:`Item` lists per split as array_record; subclass per dataset."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(
    self,
    *,
    splits: dict[str, list[Item]],
    shape: tuple[int, int, int],
    annotators: int,
    mask_from: str,
    settings: dict,
    **kwargs,
  ):
    self.items, self.settings = splits, settings
    self.shape, self.annotators, self.mask_from = shape, annotators, mask_from
    all_items = [item for items in splits.values() for item in items]
    name = f"h{fingerprint({**settings, 'shape': shape}, all_items)}"
    super().__init__(config=tfds.core.BuilderConfig(name=name), **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=f"{type(self).__name__} prepared by jaxseg from a user directory.",
      features=records.features(*self.shape, self.annotators),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(items) for split, items in self.items.items() if items}

  def _generate_examples(self, items):
    for item in items:
      image, masks, site = item.read(item)
      if masks.shape[1:] != image.shape[:2] or image.shape != self.shape:
        raise UserError(
          f"{item.files[0]}: prepared image {image.shape} / masks {masks.shape} "
          f"do not match the dataset shape {self.shape}; set an image size."
        )
      mask = (
        masks[0]
        if self.mask_from == "first"
        else ((masks.sum(0) * 2 >= masks.shape[0]) & (masks.max(0) > 0)).astype(np.uint8)
      )
      yield item.key, {"image": image, "mask": mask, "annotators": masks, "site": np.int32(site)}
