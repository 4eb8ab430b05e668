"""``isbi2012``: the ISBI 2012 EM segmentation challenge (Cardona et al. 2010).

30 labeled training images (512x512) and 30 unlabeled test images. Accepted layouts
of ``config.data.dir``: PNG folders ``train/image/N.png``, ``train/label/N.png``,
``test/N.png`` (as in ``shared/data/isbi2012``), or the original multi-page TIFs
``train-volume.tif``, ``train-labels.tif``, ``test-volume.tif``. Labels: 255 = cell
interior (class 1), 0 = membrane (class 0). The challenge's test labels are not
public, so the dataset's splits are ``train`` (labeled) and ``unlabeled``; use
``config.data.folds`` for seeded k-fold cross-validation of the 30 labeled images.
"""

import dataclasses
import os

import numpy as np

from jaxseg.data import folder, records
from jaxseg.errors import UserError

LABELS = {0: 0, 255: 1}


@dataclasses.dataclass(frozen=True)
class Settings:
  """Attributes: image_size — side to resize to (0: native 512)."""

  image_size: int = 0


class Isbi2012(folder.FolderBuilder):
  pass


def _read_png(item):
  image = folder.read_image(item.files[0])
  if len(item.files) == 1:
    return image, np.zeros((1, *image.shape[:2]), np.uint8), 0
  mask = folder.read_mask(item.files[1], LABELS)
  return image, mask[None], 0


def _tif_pages(path: str) -> np.ndarray:
  import tifffile  # noqa: PLC0415

  try:
    pages = tifffile.imread(path)
  except Exception as e:  # tifffile raises several types for corrupt files
    raise UserError(f"{path}: cannot read the TIF stack ({e}).") from e
  return pages if pages.ndim == 3 else pages[None]


def _items(source_dir: str, size: int):
  resize = (size, size) if size else None

  def sized(read):
    def wrapped(item):
      image, masks, site = read(item)
      image, mask = folder.fit(image, masks[0], resize, "resize", item.files[0])
      return image, mask[None], site

    return wrapped

  tif = os.path.join(source_dir, "train-volume.tif")
  if os.path.exists(tif):
    volume, labels = _tif_pages(tif), _tif_pages(os.path.join(source_dir, "train-labels.tif"))
    if volume.shape != labels.shape:
      raise UserError(f"{tif}: {volume.shape} pages do not match train-labels.tif {labels.shape}.")
    test_path = os.path.join(source_dir, "test-volume.tif")
    test = _tif_pages(test_path) if os.path.exists(test_path) else np.zeros((0, 1, 1))

    def page(item):
      stack, index = item.files[0], int(item.key.split("_")[-1])
      if "test-volume" in stack:
        image = test[index]
        return image[..., None].astype(np.uint8), np.zeros((1, *image.shape), np.uint8), 0
      mask = folder.map_values(labels[index].astype(np.int64), LABELS, 0, f"{stack} page {index}")
      return volume[index][..., None].astype(np.uint8), mask[None], 0

    train = [
      folder.Item(f"train_{i}", (tif, os.path.join(source_dir, "train-labels.tif")), sized(page))
      for i in range(len(volume))
    ]
    unlabeled = [folder.Item(f"test_{i}", (test_path,), sized(page)) for i in range(len(test))]
    return train, unlabeled
  images = folder.list_images(os.path.join(source_dir, "train", "image"))
  labels = folder.list_images(os.path.join(source_dir, "train", "label"))
  if set(images) != set(labels):
    raise UserError(
      f"{source_dir}/train: images without labels {sorted(set(images) - set(labels))}"
      f", labels without images {sorted(set(labels) - set(images))}."
    )
  train = [folder.Item(f"train_{k}", (images[k], labels[k]), sized(_read_png)) for k in images]
  test_dir = os.path.join(source_dir, "test")
  tests = folder.list_images(test_dir) if os.path.isdir(test_dir) else {}
  unlabeled = [folder.Item(f"test_{k}", (tests[k],), sized(_read_png)) for k in tests]
  return train, unlabeled


def make_builder(*, source_dir, data_dir, **kwargs) -> Isbi2012:
  s = records.settings(Settings, kwargs, "isbi2012")
  train, unlabeled = _items(folder.require_dir(source_dir, "isbi2012"), s.image_size)
  if not train:
    raise UserError(f"isbi2012: no training images found in {source_dir!r}.")
  h, w, c = train[0].read(train[0])[0].shape
  return Isbi2012(
    splits={"train": train, "unlabeled": unlabeled},
    shape=(h, w, c),
    annotators=1,
    mask_from="first",
    settings=dataclasses.asdict(s),
    data_dir=data_dir,
  )
