"""A dataset's fingerprint (as nnU-Net makes one), from its prepared splits and, for a
folder of files, from the files themselves: what ``jaxseg inspect`` reports.

Pure functions of arrays and of an :class:`jaxseg.data.image_folder.Scan`; the
runner (:mod:`jaxseg.run.fingerprint`) prints and writes the result.
"""

import numpy as np


def split_profile(source) -> dict:
  """Cases, image shape, class pixel frequencies, empty masks and the foreground
  fraction per image of one prepared split."""
  fields = source.take(np.arange(len(source)), ("image", "mask"))
  masks = fields["mask"]
  foreground = (masks > 0).mean(axis=(1, 2))
  counts = np.bincount(masks.ravel())
  return {
    "cases": len(masks),
    "image_shape": list(fields["image"].shape[1:]),
    "class_fractions": {int(c): float(n / counts.sum()) for c, n in enumerate(counts) if n},
    "empty_masks": float(np.mean(foreground == 0)),
    "foreground_per_image": _summary(foreground),
  }


def files_profile(scan) -> dict:
  """Per split of a folder: image sizes, modes and channels; mask modes and values."""
  out = {}
  for split in scan.pairs:
    images = [i for i in scan.images if i["split"] == split]
    sizes = np.array([i["size"] for i in images]).reshape(-1, 2)
    modes = {}
    for i in images:
      modes[i["mode"]] = modes.get(i["mode"], 0) + 1
    out[split] = {
      "images": len(images),
      "height": _summary(sizes[:, 0]),
      "width": _summary(sizes[:, 1]),
      "modes": modes,
      "gray": sum(i["gray"] for i in images),
      "colour": sum(not i["gray"] for i in images),
    }
  values = np.flatnonzero(scan.counts)
  out["masks"] = {
    "modes": dict(scan.mask_modes),
    "lossy": scan.lossy,
    "distinct_values": len(values),
    "values": values.tolist()[:32],
  }
  return out


def volume_profile(data, intensities: dict | None = None) -> dict:
  """nnU-Net's fingerprint of a volume dataset (``data``: a
  :class:`jaxseg.data.msd.VolumeData`): cases per split, shapes as stored and as
  prepared, voxel spacings (per axis; median and anisotropy, the largest median over
  the smallest), voxels per class (prepared), and per modality the intensities over
  the foreground (``intensities``: ``{modality: values}`` as stored; default: the
  prepared images)."""
  cases = list(data.cases.values())
  spacing = np.array([c["meta"].spacing for c in cases], np.float64)
  median = np.median(spacing, 0)
  counts = np.bincount(np.concatenate([c["labels"].ravel() for c in cases]))
  if intensities is None:
    modalities = data.plan["modalities"]
    intensities = {
      m: np.concatenate([c["image"][c["labels"] > 0][:, i] for c in cases])
      for i, m in enumerate(modalities)
    }
  return {
    "cases": {split: len(names) for split, names in data.splits.items()},
    "shape_as_stored": [_summary([c["meta"].shape[a] for c in cases]) for a in range(3)],
    "shape_prepared": [_summary([c["labels"].shape[a] for c in cases]) for a in range(3)],
    "spacing": [_summary(spacing[:, a]) for a in range(3)],
    "median_spacing": median.tolist(),
    "anisotropy": float(median.max() / median.min()),
    "labels": data.plan["labels"],
    "voxels_per_class": {str(c): int(n) for c, n in enumerate(counts)},
    "foreground_intensity": {m: _intensity(v) for m, v in intensities.items()},
  }


def _intensity(values) -> dict:
  values = np.asarray(values, np.float64)
  if not values.size:
    return {}
  p = np.percentile(values, [0.5, 50, 99.5])
  return {
    "mean": float(values.mean()),
    "std": float(values.std()),
    "min": float(values.min()),
    "percentile_00_5": float(p[0]),
    "median": float(p[1]),
    "percentile_99_5": float(p[2]),
    "max": float(values.max()),
  }


def volume_markdown(report: dict) -> str:
  """A volume dataset's ``report`` (:mod:`jaxseg.run.fingerprint`) as text."""
  p = report["profile"]
  axes = lambda rows: " x ".join(f"{r['min']:g}-{r['max']:g}" for r in rows)  # noqa: E731
  lines = [f"# Dataset {report['dataset']} ({report['dir'] or 'generated'})", ""]
  lines += [f"- cases: {p['cases']}", f"- shape as stored: {axes(p['shape_as_stored'])}"]
  lines += [f"- shape prepared: {axes(p['shape_prepared'])}"]
  lines += [f"- spacing (mm): {axes(p['spacing'])}; median {p['median_spacing']}"]
  lines += [f"- anisotropy (largest / smallest median spacing): {p['anisotropy']:.2f}"]
  total = sum(p["voxels_per_class"].values())
  lines += [
    "- voxels per class: "
    + ", ".join(
      f"{p['labels'].get(c, c)} {n:,} ({100 * n / total:.2f}%)"
      for c, n in p["voxels_per_class"].items()
    )
  ]
  lines += [
    "",
    "| modality | foreground mean | std | 0.5% | median | 99.5% |",
    "|---|---|---|---|---|---|",
  ]
  for m, s in p["foreground_intensity"].items():
    lines.append(
      f"| {m} | {s['mean']:.4g} | {s['std']:.4g} | {s['percentile_00_5']:.4g} | "
      f"{s['median']:.4g} | {s['percentile_99_5']:.4g} |"
    )
  lines += ["", "## The plan a run of this config uses", ""]
  lines += [f"- {k}: {v}" for k, v in report["plan"].items()]
  lines += [f"- {note}" for note in report["notes"]]
  return "\n".join(lines) + "\n"


def _summary(values) -> dict:
  values = np.asarray(values, np.float64)
  if not values.size:
    return {}
  return {
    "min": float(values.min()),
    "median": float(np.median(values)),
    "mean": float(values.mean()),
    "max": float(values.max()),
  }


def markdown(report: dict) -> str:
  """``report`` (see :mod:`jaxseg.run.fingerprint`) as the text of ``dataset.md``."""
  lines = [f"# Dataset {report['dataset']} ({report['dir'] or 'generated'})", ""]
  lines += ["## Settings jaxseg uses", ""]
  lines += [f"- {k}: {v}" for k, v in report["settings"].items()]
  lines += [f"- {note}" for note in report["notes"]]
  lines += ["", "## Prepared splits", ""]
  lines += [
    "| split | cases | image (H, W, C) | empty masks | foreground per image "
    "(min / median / max) | class pixel fractions |",
    "|---|---|---|---|---|---|",
  ]
  for split, p in report["splits"].items():
    fg = p["foreground_per_image"]
    classes = ", ".join(f"{c}: {f:.4f}" for c, f in p["class_fractions"].items())
    lines.append(
      f"| {split} | {p['cases']} | {tuple(p['image_shape'])} | {100 * p['empty_masks']:.1f}% "
      f"| {fg['min']:.4f} / {fg['median']:.4f} / {fg['max']:.4f} | {classes} |"
    )
  if report.get("files"):
    lines += ["", "## Source files", ""]
    lines += ["| split | images | height (min / median / max) | width | modes | gray / colour |"]
    lines += ["|---|---|---|---|---|---|"]
    for split, f in report["files"].items():
      if split == "masks":
        continue
      h, w = f["height"], f["width"]
      lines.append(
        f"| {split} | {f['images']} | {h['min']:g} / {h['median']:g} / {h['max']:g} | "
        f"{w['min']:g} / {w['median']:g} / {w['max']:g} | {f['modes']} | "
        f"{f['gray']} / {f['colour']} |"
      )
    m = report["files"]["masks"]
    lines += [
      "",
      f"Masks: modes {m['modes']}, {'lossy (JPEG)' if m['lossy'] else 'lossless'}, "
      f"{m['distinct_values']} distinct values {m['values']}.",
    ]
  return "\n".join(lines) + "\n"
