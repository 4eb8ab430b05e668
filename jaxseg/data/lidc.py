"""``lidc_multirater``: LIDC-IDRI lung-nodule crops with four radiologists' masks.

Layout (``shared/data/lidc_multirater``): ``<patient>/<nodule>/images/slice-n.png``
(128x128 gray) and ``<patient>/<nodule>/mask-{0..3}/slice-n.png`` ({0, 255}). Split
by patient (seeded), so no patient is in two splits. ``mask`` is the majority vote of
the raters (at least half); ``annotators`` holds all four masks.
"""

import dataclasses
import os

import jax
import numpy as np

from jaxseg.data import folder, records
from jaxseg.errors import UserError

RATERS = 4


@dataclasses.dataclass(frozen=True)
class Settings:
  """Attributes: fractions of patients in validation/test; seed of the patient split."""

  validation_fraction: float = 0.1
  test_fraction: float = 0.2
  seed: int = 0


class LidcMultirater(folder.FolderBuilder):
  pass


def _read(item):
  image = folder.read_image(item.files[0])
  masks = np.stack([folder.read_mask(p, {0: 0, 255: 1}) for p in item.files[1:]])
  for path, mask in zip(item.files[1:], masks, strict=True):
    records.check_pair(image, mask, path)
  return image, masks, 0


def make_builder(*, source_dir, data_dir, **kwargs) -> LidcMultirater:
  s = records.settings(Settings, kwargs, "lidc_multirater")
  root = folder.require_dir(source_dir, "lidc_multirater")
  if os.path.isdir(os.path.join(root, "LIDC-IDRI-slices")):
    root = os.path.join(root, "LIDC-IDRI-slices")
  patients = sorted(p for p in os.listdir(root) if os.path.isdir(os.path.join(root, p)))
  if not patients:
    raise UserError(f"lidc_multirater: no patient folders in {root!r}.")
  order = np.asarray(jax.random.permutation(jax.random.key(s.seed), len(patients)))
  n_test = max(1, round(s.test_fraction * len(patients)))
  n_val = max(1, round(s.validation_fraction * len(patients)))
  split_of = {}
  for rank, index in enumerate(order):
    split_of[patients[index]] = (
      "test" if rank < n_test else "validation" if rank < n_test + n_val else "train"
    )
  splits = {"train": [], "validation": [], "test": []}
  for patient in patients:
    for nodule in sorted(os.listdir(os.path.join(root, patient))):
      base = os.path.join(root, patient, nodule)
      images = folder.list_images(os.path.join(base, "images"))
      raters = [folder.list_images(os.path.join(base, f"mask-{r}")) for r in range(RATERS)]
      for stem, path in images.items():
        missing = [r for r in range(RATERS) if stem not in raters[r]]
        if missing:
          raise UserError(f"{path}: no mask of rater(s) {missing} (expected mask-k/{stem}.png).")
        files = (path, *(raters[r][stem] for r in range(RATERS)))
        splits[split_of[patient]].append(folder.Item(f"{patient}_{nodule}_{stem}", files, _read))
  return LidcMultirater(
    splits=splits,
    shape=(128, 128, 1),
    annotators=RATERS,
    mask_from="majority",
    settings=dataclasses.asdict(s),
    data_dir=data_dir,
  )
