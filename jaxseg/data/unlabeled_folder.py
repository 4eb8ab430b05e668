"""``unlabeled_folder``: a folder of images without masks (``config.data.unlabeled_dir``),
the unlabeled pool of the semi-supervised and federated methods.

The images are read from ``images/`` inside the folder (or the folder itself) and
brought to the labeled dataset's image size and channels. Each image belongs to a
*patient* and a *source* (hospital, scanner, archive), read from its file name by
``PATTERN`` (named groups ``patient`` and ``source``); a name it does not match is its
own patient and source. The default reads the Inf-Net / MedSeg naming of
``covid_ct_unlabeled``: ``Data-1_coronacases_org_001_12`` is slice 12 of patient
``coronacases_org_001`` from source ``coronacases``. A prepared example's ``site`` is
its patient's index in :func:`groups`' sorted list, so federated clients can be formed
by patient or by source (``config.fed.pool_partition``) from the records alone.
"""

import dataclasses
import os
import re

import numpy as np

from jaxseg.data import folder, records
from jaxseg.errors import UserError

PATTERN = r"^(?:Data-\d+_)?(?P<patient>(?P<source>[A-Za-z]+)_.+)_\d+$"


@dataclasses.dataclass(frozen=True)
class Settings:
  """Attributes: image_size (H, W) and channels of the labeled dataset; pattern."""

  image_size: tuple = (256, 256)
  channels: int = 1
  pattern: str = PATTERN


class UnlabeledFolder(folder.FolderBuilder):
  pass


def images_dir(source_dir: str) -> str:
  inner = os.path.join(source_dir, "images")
  return inner if os.path.isdir(inner) else source_dir


def groups(source_dir: str, pattern: str = PATTERN) -> tuple[dict, list[str], list[str]]:
  """``({stem: patient index}, patients sorted, each patient's source)``."""
  found = {}
  for stem in folder.list_images(images_dir(source_dir)):
    match = re.search(pattern, stem)
    found[stem] = (match["patient"], match["source"]) if match else (stem, stem)
  patients = sorted({p for p, _ in found.values()})
  source_of = dict(found.values())
  index = {p: i for i, p in enumerate(patients)}
  return (
    {stem: index[p] for stem, (p, _) in found.items()},
    patients,
    [source_of[p] for p in patients],
  )


def source_ids(source_dir: str, pattern: str = PATTERN) -> np.ndarray:
  """Per patient index, the index of its source (sorted source names)."""
  _, _, sources = groups(source_dir, pattern)
  names = sorted(set(sources))
  return np.array([names.index(s) for s in sources], np.int64)


def make_builder(*, source_dir, data_dir, **kwargs) -> UnlabeledFolder:
  s = records.settings(Settings, kwargs, "unlabeled_folder")
  if not os.path.isdir(source_dir):
    raise UserError(f"config.data.unlabeled_dir: {source_dir!r} is not a folder.")
  patient, _, _ = groups(source_dir, s.pattern)
  paths = folder.list_images(images_dir(source_dir))
  if not paths:
    raise UserError(f"config.data.unlabeled_dir: no images in {images_dir(source_dir)!r}.")
  size = tuple(s.image_size)

  def read(item):
    image = folder.read_image(item.files[0], s.channels)
    blank = np.zeros(image.shape[:2], np.uint8)
    image, mask = folder.fit(image, blank, size, "resize", item.files[0])
    return image, mask[None], patient[item.key[2:]]

  items = [folder.Item(f"u_{stem}", (path,), read) for stem, path in paths.items()]
  return UnlabeledFolder(
    splits={"unlabeled": items},
    shape=(*size, s.channels),
    annotators=1,
    mask_from="first",
    settings=dataclasses.asdict(s),
    data_dir=data_dir,
  )
