"""A dataset's fingerprint (as nnU-Net makes one), from its prepared splits and, for a
folder of files, from the files themselves: what ``jaxseg inspect`` reports.

Pure functions of arrays and of an :class:`jaxseg.data.image_folder.Scan`; the
runner (:mod:`jaxseg.run.inspect`) prints and writes the result.
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
  """``report`` (see :mod:`jaxseg.run.inspect`) as the text of ``dataset.md``."""
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
