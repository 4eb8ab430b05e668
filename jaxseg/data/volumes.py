"""Volumes (CT, MRI) from NIfTI files to training arrays and back: pure NumPy/SciPy.

The preparation of one case, as nnU-Net does it (``prepare_case``):

1. **reorientation** to the canonical RAS+ orientation (nibabel's closest canonical:
   axis permutations and flips only, recorded so predictions are put back);
2. **resampling** to the target spacing (images cubic, labels nearest neighbour),
   skipped where the spacing already matches;
3. **cropping** to the non-zero region of the image (all channels);
4. **normalisation** by modality: CT — clipped to the 0.5–99.5 percentiles of the
   training set's foreground intensities, then z-scored with that set's foreground
   mean and std (``ct_statistics``); every other modality — z-score per case.

``restore_case`` undoes 3, 2 and 1 on a prediction (class probabilities resampled
linearly, then the argmax), giving labels in the input file's voxel grid, so the
written NIfTI takes the input's affine and header unchanged.
"""

import dataclasses

import nibabel as nib
import numpy as np
from nibabel import orientations
from scipy import ndimage

from jaxseg.errors import UserError

CT = "CT"


@dataclasses.dataclass
class Meta:
  """What :func:`restore_case` needs to put a prediction back in the input's grid."""

  shape: tuple  # the input file's voxel grid
  affine: np.ndarray  # the input file's affine
  spacing: tuple  # the input's voxel size (mm), in canonical axis order
  transform: np.ndarray  # nibabel orientation transform input -> canonical
  resampled: tuple  # canonical shape after resampling
  bbox: tuple  # (start, stop) of the crop in the resampled volume

  def to_json(self) -> dict:
    return {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_json(cls, values: dict) -> "Meta":
    v = dict(values)
    return cls(
      shape=tuple(v["shape"]),
      affine=np.asarray(v["affine"]),
      spacing=tuple(v["spacing"]),
      transform=np.asarray(v["transform"]),
      resampled=tuple(v["resampled"]),
      bbox=tuple(tuple(b) for b in v["bbox"]),
    )


def read(path: str):
  """``(array, affine, header)`` of a NIfTI file (float32 array as stored, 3-D or 4-D)."""
  try:
    img = nib.load(path)
    return np.asarray(img.dataobj, dtype=np.float32), img.affine, img.header
  except Exception as e:  # nibabel raises many types for damaged files
    raise UserError(f"{path}: cannot be read as NIfTI ({type(e).__name__}: {e}).") from e


def spacing_of(affine: np.ndarray) -> np.ndarray:
  """Voxel size along each array axis: the lengths of the affine's columns."""
  return np.sqrt((affine[:3, :3] ** 2).sum(0))


def to_canonical(array: np.ndarray, affine: np.ndarray):
  """``(array, transform)``: ``array`` (spatial axes first) reoriented to RAS+."""
  transform = orientations.io_orientation(affine)
  return orientations.apply_orientation(array, transform), transform


def from_canonical(array: np.ndarray, transform: np.ndarray) -> np.ndarray:
  """The inverse of :func:`to_canonical` (``transform`` as it returned)."""
  inverse = orientations.ornt_transform(orientations.axcodes2ornt("RAS"), transform)
  return orientations.apply_orientation(array, inverse)


def resample(array: np.ndarray, shape, order: int) -> np.ndarray:
  """``array`` (spatial axes first, optional channels last) zoomed to ``shape``; voxel
  edges aligned (``grid_mode``), as a change of spacing over the same extent."""
  shape = tuple(int(s) for s in shape)
  if tuple(array.shape[: len(shape)]) == shape:
    return array
  factors = [o / i for o, i in zip(shape, array.shape, strict=False)]
  factors += [1.0] * (array.ndim - len(shape))
  out = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True, prefilter=True)
  return out.astype(array.dtype)


def resampled_shape(shape, spacing, target) -> tuple:
  return tuple(
    max(1, int(round(s * sp / t))) for s, sp, t in zip(shape, spacing, target, strict=True)
  )


def nonzero_bbox(image: np.ndarray) -> tuple:
  """``(start, stop)`` of the region where any channel is non-zero (whole if none)."""
  mask = np.any(image != 0, axis=-1)
  if not mask.any():
    return tuple(0 for _ in mask.shape), tuple(mask.shape)
  idx = np.nonzero(mask)
  return tuple(int(i.min()) for i in idx), tuple(int(i.max()) + 1 for i in idx)


def crop(array: np.ndarray, bbox) -> np.ndarray:
  return array[tuple(slice(a, b) for a, b in zip(*bbox, strict=True))]


def ct_statistics(values: np.ndarray) -> dict:
  """The dataset-wide CT normalisation from foreground intensities (all training cases)."""
  lo, hi = np.percentile(values, [0.5, 99.5])
  clipped = np.clip(values, lo, hi)
  return {
    "low": float(lo),
    "high": float(hi),
    "mean": float(clipped.mean()),
    "std": float(clipped.std()),
  }


def normalize(image: np.ndarray, modalities, ct_stats: dict | None) -> np.ndarray:
  """Each channel by its modality (see the module doc); ``ct_stats``: channel index
  (a string) -> :func:`ct_statistics` of each CT channel."""
  out = np.empty_like(image, dtype=np.float32)
  for c, modality in enumerate(modalities):
    x = image[..., c]
    if modality.upper() == CT:
      if not ct_stats or str(c) not in ct_stats:
        raise UserError(f"CT channel {c} needs the training set's statistics (none given).")
      s = ct_stats[str(c)]
      out[..., c] = (np.clip(x, s["low"], s["high"]) - s["mean"]) / max(s["std"], 1e-8)
    else:
      out[..., c] = (x - x.mean()) / max(float(x.std()), 1e-8)
  return out


def load_channels(paths) -> tuple:
  """``(image [X, Y, Z, C], affine, header)`` from one file per channel (a 4-D file's
  last axis are channels)."""
  arrays, affine, header = [], None, None
  for path in paths:
    array, aff, hdr = read(path)
    if array.ndim == 3:
      array = array[..., None]
    if array.ndim != 4:
      raise UserError(f"{path}: expected a 3-D volume (or 4-D with channels), found {array.shape}.")
    check_values(array, path)
    if affine is None:
      affine, header = aff, hdr
    elif array.shape[:3] != arrays[0].shape[:3]:
      raise UserError(
        f"{path}: shape {array.shape[:3]} differs from channel 0's {arrays[0].shape[:3]}."
      )
    arrays.append(array)
  return np.concatenate(arrays, -1), affine, header


def check_values(array: np.ndarray, path: str) -> None:
  """Raises naming ``path`` on non-finite voxels, or a channel of one value (which
  z-scoring would turn into NaN): caught where the data enter, not as a NaN loss."""
  bad = int(array.size - np.isfinite(array).sum())
  if bad:
    raise UserError(f"{path}: {bad:,} non-finite voxel value(s) (NaN or Inf); fix or remove it.")
  flat = array.reshape(-1, array.shape[-1])
  for c in np.flatnonzero(flat.min(0) == flat.max(0)):
    raise UserError(
      f"{path}: channel {c} is constant (every voxel {flat[0, c]:g}): an empty or broken scan."
    )


def prepare_case(image, affine, labels, target_spacing, modalities, ct_stats=None):
  """``(image, labels, meta)``: one case prepared for training or prediction (see the
  module doc). ``labels`` may be ``None`` (prediction)."""
  canon, transform = to_canonical(image, affine)
  spacing = canonical_spacing(affine)
  shape = resampled_shape(canon.shape[:3], spacing, target_spacing)
  canon = resample(canon, shape, order=3)
  bbox = nonzero_bbox(canon)
  out_image = normalize(crop(canon, bbox), modalities, ct_stats)
  out_labels = None
  if labels is not None:
    lab, _ = to_canonical(labels, affine)
    out_labels = crop(resample(lab, shape, order=0), bbox).astype(np.uint8)
  meta = Meta(tuple(image.shape[:3]), np.asarray(affine), spacing, transform, shape, bbox)
  return out_image, out_labels, meta


def canonical_spacing(affine) -> tuple:
  """The voxel size along each canonical (RAS) axis."""
  spacing = spacing_of(affine)
  order = np.argsort(
    orientations.io_orientation(affine)[:, 0]
  )  # canonical axis k comes from input axis order[k]
  return tuple(float(spacing[i]) for i in order)


def restore_case(probs: np.ndarray, meta: Meta) -> np.ndarray:
  """Labels in the input's voxel grid from class probabilities ``[x, y, z, K]`` over the
  prepared (cropped, resampled, canonical) volume; ``K == 1``: foreground probability."""
  if probs.shape[-1] == 1:
    probs = np.concatenate([1.0 - probs, probs], -1)
  full = np.zeros((*meta.resampled, probs.shape[-1]), np.float32)
  full[..., 0] = 1.0  # background outside the crop
  full[tuple(slice(a, b) for a, b in zip(*meta.bbox, strict=True))] = probs
  canonical_shape = from_canonical_shape(meta)
  labels = np.argmax(resample(full, canonical_shape, order=1), -1).astype(np.uint8)
  return from_canonical(labels, meta.transform)


def from_canonical_shape(meta: Meta) -> tuple:
  """The canonical (reoriented, not resampled) shape of the input."""
  order = np.argsort(meta.transform[:, 0])
  return tuple(int(meta.shape[i]) for i in order)


def check_labels(labels: np.ndarray, known, path: str) -> np.ndarray:
  """Integer labels among ``known`` (dataset.json's), or a clear error."""
  if not np.all(np.equal(np.mod(labels, 1), 0)):
    raise UserError(f"{path}: labels must be integers, found fractional values.")
  values = set(np.unique(labels).astype(int).tolist())
  if not values <= set(known):
    raise UserError(
      f"{path}: label values {sorted(values - set(known))} are not among dataset.json's "
      f"labels {sorted(known)}."
    )
  return labels.astype(np.uint8)
