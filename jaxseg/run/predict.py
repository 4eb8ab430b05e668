"""``jaxseg predict``: masks and overlays of new images or volumes, from runs' best
checkpoints; the input decides what is written.

* **Images** (a PNG/JPEG/TIFF file or a folder of them): ``<stem>_mask.png`` in
  :func:`mask_encoding` and ``<stem>_overlay.png``, any image size (tiled as
  :mod:`jaxseg.infer` describes; ``config.infer`` sets the tile, overlap, tile batch
  and test-time transforms).
* **Volumes** (a NIfTI file or a folder of them; nnU-Net's ``<case>_0000.nii.gz``
  channel files grouped by case): ``<case>.nii.gz`` (uint8 labels; the input's affine
  and header) and ``<case>_overlay.png`` (axial, coronal and sagittal mid-slices), each
  prediction put back into the input's voxel grid
  (:func:`jaxseg.data.volumes.restore_case`: crop undone, resampled to the original
  spacing, original orientation), so ``eval`` scores exactly what ``predict`` writes.

Several ``--workdir`` runs (e.g. the k folds) are an ensemble: their probabilities are
averaged.
"""

import json
import os
import re

import nibabel as nib
import numpy as np
from PIL import Image

from jaxseg import infer
from jaxseg.data import folder, volumes
from jaxseg.errors import UserError
from jaxseg.run import evaluators, pictures


def mask_encoding(data_config, num_classes: int) -> np.ndarray:
  """``class -> pixel value`` of the written masks: the dataset's own encoding where its
  settings give one (``mask_values``, e.g. 0/255 or palette indices; the smallest value
  of a class mapped from several), else 0/255 for binary masks and class ids otherwise."""
  classes = max(num_classes, 2)
  if "mask_values" in data_config.kwargs and not isinstance(data_config.kwargs.mask_values, str):
    values = np.full(classes, -1)
    for value, cls in sorted(data_config.kwargs.mask_values, reverse=True):
      if cls < classes:
        values[cls] = value
    if (values >= 0).all() and values.max() <= 255:
      return values.astype(np.uint8)
  return np.array([0, 255] if classes == 2 else range(classes), np.uint8)


def _listed(path: str, what: str, files: dict) -> dict:
  if not files:
    raise UserError(f"--input {path!r}: no {what} in the folder.")
  return files


def _missing(path: str) -> None:
  if not os.path.exists(path):
    raise UserError(f"--input {path!r} does not exist.")


class Images:
  """Prediction of 2-D runs: ``{stem: [file]}`` inputs, masks and overlays as PNG."""

  def __init__(self, runs):
    self.runs, exp = runs, runs[0][0]
    self.interface = exp.model.interface
    self.encoding = mask_encoding(exp.config.data, self.interface.num_classes)
    self.how = exp.predict_image.mode(runs[0][1])

  def inputs(self, path: str) -> dict:
    if os.path.isdir(path):
      found = {stem: [f] for stem, f in folder.list_images(path).items()}
      return _listed(path, "image files (png, jpg, tif)", found)
    _missing(path)
    return {os.path.splitext(os.path.basename(path))[0]: [path]}

  def write(self, name: str, files: list, output: str) -> tuple[str, tuple]:
    image = folder.read_image(files[0], self.interface.in_channels).astype(np.float32) / 255.0
    prob = np.mean([exp.predict_image(v, image) for exp, v, _ in self.runs], 0)
    labels = infer.labels_of(prob)
    path = os.path.join(output, f"{name}_mask.png")
    Image.fromarray(self.encoding[labels]).save(path)
    overlay = pictures.overlay(image, np.zeros_like(labels), labels)
    Image.fromarray(overlay).save(os.path.join(output, f"{name}_overlay.png"))
    return path, labels.shape


class Volumes:
  """Prediction of 3-D runs: ``{case: [channel files]}`` inputs, labels as NIfTI in the
  input's grid and mid-slice overlays."""

  how = "sliding window"

  def __init__(self, runs):
    plans = {json.dumps(exp.volumes.plan["target_spacing"]) for exp, _, _ in runs}
    if len(plans) > 1:
      raise UserError(f"--workdir runs were prepared at different spacings {sorted(plans)}.")
    self.runs, self.plan = runs, runs[0][0].volumes.plan

  def inputs(self, path: str) -> dict:
    if os.path.isdir(path):
      cases = {}
      for f in sorted(f for f in os.listdir(path) if f.endswith((".nii.gz", ".nii"))):
        stem = re.sub(r"\.nii(\.gz)?$", "", f)
        cases.setdefault(re.sub(r"_\d{4}$", "", stem), []).append(os.path.join(path, f))
      return _listed(path, "NIfTI files (.nii.gz, .nii)", cases)
    _missing(path)
    return {re.sub(r"(_\d{4})?\.nii(\.gz)?$", "", os.path.basename(path)): [path]}

  def write(self, name: str, files: list, output: str) -> tuple[str, tuple]:
    image, affine, header = volumes.load_channels(files)
    plan = self.plan
    prepared, _, meta = volumes.prepare_case(
      image, affine, None, plan["target_spacing"], plan["modalities"], plan["ct_statistics"]
    )
    probs = np.mean([exp.volumes.predict(v, prepared) for exp, v, _ in self.runs], 0)
    labels = volumes.restore_case(probs, meta)
    out = nib.Nifti1Image(labels, affine, header)
    out.set_data_dtype(np.uint8)
    path = os.path.join(output, f"{name}.nii.gz")
    nib.save(out, path)
    save_slices(os.path.join(output, f"{name}_overlay.png"), image[..., 0], labels)
    return path, labels.shape


def run(workdirs: list[str], input_path: str, output: str) -> list[str]:
  """Predicts every input of ``input_path`` with the runs ``workdirs`` (one, or an
  ensemble of runs of the same kind); the paths of the masks written."""
  runs = [evaluators.restore(w, splits=()) for w in workdirs]
  kinds = {exp.volumes is not None for exp, _, _ in runs}
  if len(kinds) > 1:
    raise UserError("--workdir: an ensemble is of image runs or of volume runs, not both.")
  predictor = Volumes(runs) if kinds == {True} else Images(runs)
  inputs = predictor.inputs(input_path)
  os.makedirs(output, exist_ok=True)
  written, ensemble = [], f", {len(runs)} runs" if len(runs) > 1 else ""
  for name, files in inputs.items():
    path, shape = predictor.write(name, files, output)
    written.append(path)
    print(f"{files[0]} -> {path} ({'x'.join(map(str, shape))}, {predictor.how}{ensemble})")
  return written


def save_slices(path: str, image: np.ndarray, labels: np.ndarray) -> None:
  """The axial, coronal and sagittal mid-slices with the prediction in red."""
  tiles = []
  for axis in (2, 1, 0):
    i = image.shape[axis] // 2
    img, lab = np.take(image, i, axis), np.take(labels, i, axis)
    img = (img - img.min()) / max(float(np.ptp(img)), 1e-6)
    tiles.append(np.rot90(pictures.overlay(img[..., None], np.zeros_like(lab), lab)))
  height = max(t.shape[0] for t in tiles)
  tiles = [np.pad(t, ((0, height - t.shape[0]), (0, 2), (0, 0))) for t in tiles]
  grid = np.concatenate(tiles, 1)
  scale = max(1, 512 // grid.shape[1])
  Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale)).save(path)
