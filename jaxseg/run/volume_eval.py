"""``jaxseg eval`` and ``jaxseg predict`` of volume runs.

Both put each prediction back into the input's voxel grid
(:func:`jaxseg.data.volumes.restore_case`: crop undone, resampled to the original
spacing, original orientation), so ``eval`` scores exactly what ``predict`` writes.

``eval``: per case and foreground class, Dice, IoU, HD95 and average surface
distance in mm (each case's own spacing) and normalized surface Dice at
``config.eval.nsd_tolerance`` mm, against the case's label file as stored (or the
generated labels of a built-in dataset); printed as a table of means, written as
``<split>_metrics.json`` (the schema of image runs: ``{metric: {mean, std, pooled}}``
over the cases; ``dice`` etc. the per-case mean over classes) and a per-case
``<split>_cases.csv``. Empty-mask conventions as for images (:mod:`jaxseg.metrics`):
a class absent from both is Dice 1, HD95/ASD 0, NSD 1; absent from one only: Dice 0,
NSD 0, HD95/ASD infinite in the CSV, averaged as the case's diagonal in mm and
counted (``<metric>_missed``).

``predict``: ``<case>.nii.gz`` (uint8 labels; the input's affine and header) and
``<case>_overlay.png`` (axial, coronal and sagittal mid-slices) for a NIfTI file or a
folder of them (nnU-Net's ``<case>_0000.nii.gz`` channel files grouped by case);
several ``--workdir`` runs (e.g. the k folds) are an ensemble: their probabilities
are averaged.
"""

import csv
import json
import os
import re

import nibabel as nib
import numpy as np
from PIL import Image

from jaxseg import metrics
from jaxseg.data import volumes
from jaxseg.errors import UserError
from jaxseg.run import pictures
from jaxseg.run.evaluation import restore
from jaxseg.run.volume import class_dice

METRICS = ("dice", "iou", "hd95", "asd", "nsd")


def case_scores(pred, truth, spacing, num_classes: int, tolerance: float) -> dict:
  """``{metric_class: value}`` of one case (classes 1..K-1)."""
  out = {}
  for c, dice in enumerate(class_dice(pred, truth, num_classes), start=1):
    p, g = pred == c, truth == c
    out[f"dice_{c}"] = float(dice)
    out[f"iou_{c}"] = float(dice / (2 - dice))  # IoU = Dice / (2 - Dice)
    out[f"hd95_{c}"] = metrics.hausdorff(p, g, percentile=95, spacing=spacing)
    out[f"asd_{c}"] = metrics.average_surface_distance(p, g, spacing)
    out[f"nsd_{c}"] = metrics.normalized_surface_dice(p, g, tolerance, spacing)
  return out


def truth_of(case: dict) -> np.ndarray:
  """The case's labels in its input grid: the label file as stored, or (generated
  data) the case's own labels."""
  if case.get("label_file"):
    return volumes.read(case["label_file"])[0].astype(np.uint8)
  return case["labels"]


def summarize(rows: list[dict], num_classes: int, extents) -> dict:
  """``{metric: {mean, std, pooled: None}}`` over cases; infinite distances (a class
  missed or hallucinated) count as the case's ``extents`` (its diagonal in mm) and
  are counted as ``<metric>_missed``."""
  table, classes = {}, range(1, max(num_classes, 2))
  for m in METRICS:
    values = np.array([[r[f"{m}_{c}"] for c in classes] for r in rows], np.float64)
    missed = ~np.isfinite(values)
    values = metrics.bounded(values, np.asarray(extents, np.float64)[:, None])
    table[m] = metrics.mean_std(values.mean(1))
    for i, c in enumerate(classes):
      table[f"{m}_{c}"] = metrics.mean_std(values[:, i])
      if missed[:, i].any():
        table[f"{m}_{c}_missed"] = int(missed[:, i].sum())
  return table


def run_eval(workdir: str, split: str = "test") -> dict:
  exp, variables, step = restore(workdir, (split,))
  num, tolerance = exp.model.interface.num_classes, exp.config.eval.nsd_tolerance
  rows, extents = [], []
  for name in exp.volumes.data.splits[split]:
    case = exp.volumes.data.cases[name]
    pred = volumes.restore_case(exp.volumes.predict(variables, case["image"]), case["meta"])
    spacing = volumes.spacing_of(case["meta"].affine)
    rows.append({"case": name, **case_scores(pred, truth_of(case), spacing, num, tolerance)})
    extents.append(float(np.linalg.norm(np.asarray(pred.shape) * spacing)))
  table = summarize(rows, num, extents)
  result = {"step": step, "split": split, "cases": len(rows), **table}
  with open(os.path.join(workdir, f"{split}_metrics.json"), "w") as f:
    json.dump(result, f, indent=2)
  with open(os.path.join(workdir, f"{split}_cases.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  print(f"\n{split} split, {len(rows)} cases, best checkpoint (step {step}):\n")
  print(format_table(table, num, tolerance))
  return result


def format_table(table: dict, num_classes: int, tolerance: float) -> str:
  head = f"| class | Dice | IoU | HD95 (mm) | ASD (mm) | NSD@{tolerance:g}mm |"
  lines = [head, "|---|---|---|---|---|---|"]
  for c in [*range(1, max(num_classes, 2)), "mean"]:
    suffix = "" if c == "mean" else f"_{c}"
    cells = " | ".join(f"{table[m + suffix]['mean']:.4f}" for m in METRICS)
    lines.append(f"| {c} | {cells} |")
  return "\n".join(lines)


def input_cases(path: str) -> dict:
  """``{case: [channel files]}`` of a NIfTI file or a folder of them."""
  if os.path.isdir(path):
    files = sorted(f for f in os.listdir(path) if f.endswith((".nii.gz", ".nii")))
    if not files:
      raise UserError(f"--input {path!r}: no NIfTI files (.nii.gz, .nii) in the folder.")
    cases = {}
    for f in files:
      stem = re.sub(r"\.nii(\.gz)?$", "", f)
      base = re.sub(r"_\d{4}$", "", stem)
      cases.setdefault(base, []).append(os.path.join(path, f))
    return cases
  if not os.path.exists(path):
    raise UserError(f"--input {path!r} does not exist.")
  return {re.sub(r"(_\d{4})?\.nii(\.gz)?$", "", os.path.basename(path)): [path]}


def run_predict(workdirs: list[str], input_path: str, output: str) -> list[str]:
  runs = [restore(w, ()) for w in workdirs]
  plans = {json.dumps(exp.volumes.plan["target_spacing"]) for exp, _, _ in runs}
  if len(plans) > 1:
    raise UserError(f"--workdir runs were prepared at different spacings {sorted(plans)}.")
  plan = runs[0][0].volumes.plan
  os.makedirs(output, exist_ok=True)
  written = []
  for name, files in input_cases(input_path).items():
    image, affine, header = volumes.load_channels(files)
    prepared, _, meta = volumes.prepare_case(
      image, affine, None, plan["target_spacing"], plan["modalities"], plan["ct_statistics"]
    )
    probs = np.mean([exp.volumes.predict(v, prepared) for exp, v, _ in runs], 0)
    labels = volumes.restore_case(probs, meta)
    out = nib.Nifti1Image(labels, affine, header)
    out.set_data_dtype(np.uint8)
    path = os.path.join(output, f"{name}.nii.gz")
    nib.save(out, path)
    save_slices(os.path.join(output, f"{name}_overlay.png"), image[..., 0], labels)
    written.append(path)
    print(f"{files[0]} -> {path} ({'x'.join(map(str, labels.shape))}, {len(runs)} run(s))")
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
