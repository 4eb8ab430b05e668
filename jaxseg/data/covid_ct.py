"""``covid_ct_lesion``: COVID-19 CT lung-infection (lesion) segmentation.

Reads either
* the slice layout of the MedSeg set as repackaged by Inf-Net (``shared/data/covid_ct``):
  ``TrainingSet/LungInfection-Train/Doctor-label/{Imgs,GT}`` and
  ``TestingSet/LungInfection-Test/{Imgs,GT}`` (binary masks {0, 255}), and the
  ``MultiClassInfection-{Train,Test}/{Imgs,GT}`` variant (palette indices 0
  background, 1 ground-glass opacity, 2 consolidation); or
* the original NIfTI volumes ``tr_im.nii.gz`` / ``tr_mask.nii.gz`` (MedSeg labels 1
  ground-glass, 2 consolidation, 3 pleural effusion), whose axial slices are windowed
  to [-1250, 250] HU. Volumes have no test split: set ``test_fraction``.

Slices are resized to ``image_size`` (the augmentation study used 256).
"""

import dataclasses
import os

import numpy as np

from jaxseg.data import folder, records
from jaxseg.errors import UserError

VARIANTS = ("binary", "multiclass")
HU_WINDOW = (-1250.0, 250.0)


@dataclasses.dataclass(frozen=True)
class Settings:
  """Attributes: image_size; variant — ``binary`` lesion or ``multiclass`` (GGO/consolidation)."""

  image_size: int = 256
  variant: str = "binary"


class CovidCtLesion(folder.FolderBuilder):
  pass


def _slice_items(source_dir: str, s: Settings) -> dict[str, list]:
  if s.variant == "binary":
    folders = {
      "train": "TrainingSet/LungInfection-Train/Doctor-label",
      "test": "TestingSet/LungInfection-Test",
    }
    mapping = {0: 0, 255: 1}
  else:
    folders = {
      "train": "TrainingSet/MultiClassInfection-Train",
      "test": "TestingSet/MultiClassInfection-Test",
    }
    mapping = {0: 0, 1: 1, 2: 2}
  size = (s.image_size, s.image_size)

  def read(item):
    image = folder.read_image(item.files[0])
    mask = folder.read_mask(item.files[1], mapping)
    image, mask = folder.fit(image, mask, size, "resize", item.files[0])
    return image, mask[None], 0

  splits = {}
  for split, sub in folders.items():
    images = folder.list_images(os.path.join(source_dir, sub, "Imgs"))
    masks = folder.list_images(os.path.join(source_dir, sub, "GT"))
    missing = sorted(set(images) ^ set(masks))
    if missing:
      raise UserError(f"{source_dir}/{sub}: slices without an image or a mask: {missing[:10]}.")
    splits[split] = [folder.Item(f"{split}_{k}", (images[k], masks[k]), read) for k in images]
  return splits


def _volume_items(source_dir: str, s: Settings) -> dict[str, list]:
  import nibabel  # noqa: PLC0415

  paths = [os.path.join(source_dir, f) for f in ("tr_im.nii.gz", "tr_mask.nii.gz")]
  try:
    volume, labels = (np.asarray(nibabel.load(p).dataobj) for p in paths)
  except Exception as e:  # nibabel raises several types for corrupt files
    raise UserError(f"{source_dir}: cannot read the NIfTI volumes ({e}).") from e
  if volume.shape != labels.shape:
    raise UserError(f"{paths[1]}: mask volume {labels.shape} does not match image {volume.shape}.")
  mapping = {0: 0, 1: 1, 2: 1, 3: 0} if s.variant == "binary" else {0: 0, 1: 1, 2: 2, 3: 0}
  lo, hi = HU_WINDOW

  def read(item):
    z = int(item.key.split("_")[-1])
    image = np.clip((volume[..., z].astype(np.float32) - lo) / (hi - lo), 0, 1)
    image = np.round(image * 255).astype(np.uint8)[..., None]
    mask = folder.map_values(labels[..., z].astype(np.int64), mapping, 0, f"{paths[1]} slice {z}")
    image, mask = folder.fit(image, mask, (s.image_size, s.image_size), "resize", paths[0])
    return image, mask[None], 0

  return {"train": [folder.Item(f"slice_{z}", tuple(paths), read) for z in range(volume.shape[-1])]}


def make_builder(*, source_dir, data_dir, **kwargs) -> CovidCtLesion:
  s = records.settings(Settings, kwargs, "covid_ct_lesion")
  if s.variant not in VARIANTS:
    raise UserError(f"config.data.kwargs.variant: expected one of {VARIANTS}, found {s.variant!r}.")
  source_dir = folder.require_dir(source_dir, "covid_ct_lesion")
  if os.path.exists(os.path.join(source_dir, "tr_im.nii.gz")):
    splits = _volume_items(source_dir, s)
  else:
    splits = _slice_items(source_dir, s)
  return CovidCtLesion(
    splits=splits,
    shape=(s.image_size, s.image_size, 1),
    annotators=1,
    mask_from="first",
    settings=dataclasses.asdict(s),
    data_dir=data_dir,
  )
