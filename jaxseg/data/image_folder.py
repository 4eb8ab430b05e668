"""``image_folder``: any ``images/`` + ``masks/`` pair of folders, matched by file stem.

``config.data.dir`` holds either ``images/`` and ``masks/`` (all in ``train``; the
validation and test splits are carved from it by ``config.data.validation_fraction``
and ``test_fraction``), or ``train/``, ``validation/``, ``test/`` subfolders, each with
``images/`` and ``masks/``. PNG, JPEG and TIF files. ``mask_values`` maps pixel values
to classes (``((0, 0), (255, 1))`` or ``((0, 0), (1, 1), (2, 2))``); ``mask_threshold``
snaps values of lossy JPEG masks; ``image_size`` (H, W) with ``resize_mode``
``resize`` or ``pad`` brings every pair to one size. Empty masks are allowed.
Unmatched files, a mask whose size differs from its image, an unreadable file, or a
mask value outside the mapping raise an error naming the file.

``mask_suffixes`` (e.g. ``("_mask",)``): masks are named ``<stem><suffix>`` and, for
images with several objects in separate files, ``<stem><suffix>_<n>``
(``case_mask.png``, ``case_mask_1.png``, …, as some public sets store them); all of an
image's masks are merged by union (the larger class where they overlap).
"""

import dataclasses
import os
import re

import numpy as np

from jaxseg.data import folder, records
from jaxseg.errors import UserError


@dataclasses.dataclass(frozen=True)
class Settings:
  """See the module docstring."""

  image_size: tuple = (256, 256)
  resize_mode: str = "resize"
  mask_values: tuple = ((0, 0), (255, 1))
  mask_threshold: int = 0
  channels: int = 1
  mask_suffixes: tuple = ()


class ImageFolder(folder.FolderBuilder):
  pass


def _image_stem(mask_stem: str, suffixes: tuple) -> str:
  """The image a mask belongs to: its stem without ``<suffix>`` or ``<suffix>_<n>``."""
  for suffix in suffixes:
    found = re.fullmatch(rf"(.+){re.escape(suffix)}(_\d+)?", mask_stem)
    if found:
      return found.group(1)
  return mask_stem


def _pairs(base: str, split: str, read, suffixes: tuple = ()) -> list:
  images = folder.list_images(os.path.join(base, "images"))
  masks = {}
  for stem, path in folder.list_images(os.path.join(base, "masks")).items():
    masks.setdefault(_image_stem(stem, suffixes), []).append(path)
  only_images, only_masks = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
  if only_images or only_masks:
    how = f"file stem + one of {list(suffixes)}" if suffixes else "file stem"
    raise UserError(
      f"{base}: unmatched files — images without a mask: {only_images[:10]}, "
      f"masks without an image: {only_masks[:10]} (matched by {how})."
    )
  return [folder.Item(f"{split}_{s}", (images[s], *sorted(masks[s])), read) for s in images]


def make_builder(*, source_dir, data_dir, **kwargs) -> ImageFolder:
  s = records.settings(Settings, kwargs, "image_folder")
  root = folder.require_dir(source_dir, "image_folder")
  mapping = {int(k): int(v) for k, v in s.mask_values}
  size = tuple(s.image_size) if s.image_size else None

  def read(item):
    image = folder.read_image(item.files[0], s.channels)
    masks = [folder.read_mask(path, mapping, s.mask_threshold) for path in item.files[1:]]
    if len({m.shape for m in masks}) > 1:
      raise UserError(f"{item.files[1]}: the masks of one image differ in size.")
    mask = np.maximum.reduce(masks)  # several object masks of one image: their union
    image, mask = folder.fit(image, mask, size, s.resize_mode, item.files[1])
    return image, mask[None], 0

  if os.path.isdir(os.path.join(root, "images")):
    splits = {"train": _pairs(root, "train", read, tuple(s.mask_suffixes))}
  else:
    splits = {
      split: _pairs(os.path.join(root, split), split, read, tuple(s.mask_suffixes))
      for split in ("train", "validation", "test")
      if os.path.isdir(os.path.join(root, split))
    }
  if not splits.get("train"):
    raise UserError(f"image_folder: no images/ + masks/ pairs found in {root!r}.")
  first = splits["train"][0]
  shape = first.read(first)[0].shape
  return ImageFolder(
    splits=splits,
    shape=shape,
    annotators=1,
    mask_from="first",
    settings=dataclasses.asdict(s),
    data_dir=data_dir,
  )
