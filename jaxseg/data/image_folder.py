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
"""

import dataclasses
import os

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


class ImageFolder(folder.FolderBuilder):
  pass


def _pairs(base: str, split: str, read) -> list:
  images = folder.list_images(os.path.join(base, "images"))
  masks = folder.list_images(os.path.join(base, "masks"))
  only_images, only_masks = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
  if only_images or only_masks:
    raise UserError(
      f"{base}: unmatched files — images without a mask: {only_images[:10]}, "
      f"masks without an image: {only_masks[:10]} (matched by file stem)."
    )
  return [folder.Item(f"{split}_{stem}", (images[stem], masks[stem]), read) for stem in images]


def make_builder(*, source_dir, data_dir, **kwargs) -> ImageFolder:
  s = records.settings(Settings, kwargs, "image_folder")
  root = folder.require_dir(source_dir, "image_folder")
  mapping = {int(k): int(v) for k, v in s.mask_values}
  size = tuple(s.image_size) if s.image_size else None

  def read(item):
    image = folder.read_image(item.files[0], s.channels)
    mask = folder.read_mask(item.files[1], mapping, s.mask_threshold)
    image, mask = folder.fit(image, mask, size, s.resize_mode, item.files[1])
    return image, mask[None], 0

  if os.path.isdir(os.path.join(root, "images")):
    splits = {"train": _pairs(root, "train", read)}
  else:
    splits = {
      split: _pairs(os.path.join(root, split), split, read)
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
