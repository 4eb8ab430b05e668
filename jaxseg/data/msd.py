"""``msd``: a dataset in the Medical Segmentation Decathlon / nnU-Net raw layout.

    DIR/dataset.json   labels ({"0": "background", "1": ...} or nnU-Net v2's
                       {"background": 0, ...}), modalities ("modality" or
                       "channel_names"), the "training" list of image/label pairs
    DIR/imagesTr/      <case>.nii.gz (channels in a 4-D file or one file per channel,
                       <case>_0000.nii.gz, <case>_0001.nii.gz, ... as nnU-Net names them)
    DIR/labelsTr/      <case>.nii.gz
    DIR/imagesTs/      cases without labels (dataset.json's "test" list, or every
                       NIfTI file of the folder): the unlabeled pool of
                       semi-supervised methods (setting ``unlabeled``)

Every case is prepared by :func:`jaxseg.data.volumes.prepare_case` (canonical
orientation, resampling to the target spacing — by default the training cases'
median —, cropping, normalisation by modality; CT statistics from the foreground of
all training cases) and cached in ``<cache>/volumes/msd_<hash>/``, the hash over the
settings and the bytes of every file, so a changed setting or file never reuses stale
data. Splits: the cases shuffled by ``seed`` into ``folds`` folds by case; fold
``fold`` is the test split, ``validation_fraction`` of the rest the validation split.
"""

import csv
import dataclasses
import json
import os
import re
import shutil
import zipfile

import numpy as np

from jaxseg.data import folder, volumes
from jaxseg.data.volumes import Meta
from jaxseg.errors import UserError

NIFTI = (".nii.gz", ".nii")


@dataclasses.dataclass(frozen=True)
class Settings:
  """``config.data.kwargs`` of ``msd``.

  Attributes:
    target_spacing: mm per voxel along the canonical axes; empty: the training
      cases' median.
    folds, fold: k-fold split by case; fold ``fold`` is the test split.
    validation_fraction: of the remaining cases, held out for validation.
    max_cases: use only the first N cases of dataset.json (0: all; smoke runs).
    seed: of the split.
    unlabeled: the cases without labels (``imagesTs``) join the training data of
      semi-supervised methods and federated clients as unlabeled cases.
    sites: a CSV file of ``case,site`` lines (e.g. the hospital of each case; a header
      line is allowed) — a federated run can then partition the cases by site.
    ct_statistics: ``{channel: {mean, std, p005, p995}}`` of each CT channel to
      normalise with; empty: the labeled cases' own (a federated site takes the
      server's, so every site prepares its cases alike).
    site: the folder is a federated site's: every labeled case is a training case (no
      folds: validation and test are the server's).
  """

  target_spacing: tuple = ()
  folds: int = 5
  fold: int = 0
  validation_fraction: float = 0.1
  max_cases: int = 0
  seed: int = 0
  unlabeled: bool = True
  sites: str = ""
  ct_statistics: dict | None = None
  site: bool = False


@dataclasses.dataclass
class VolumeData:
  """Prepared cases and their splits; ``plan`` says how they were prepared."""

  plan: dict  # modalities, labels, target_spacing, ct_statistics, median_shape
  cases: dict  # name -> {"image" [x, y, z, C] float32, "labels" [x, y, z] uint8, "meta"}
  splits: dict  # split -> [case names]; "unlabeled": cases without labels (zeros)


def read_description(source_dir: str) -> dict:
  path = os.path.join(source_dir, "dataset.json")
  if not os.path.exists(path):
    raise UserError(f"dataset 'msd': {path} not found (the MSD / nnU-Net raw layout has one).")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}: not valid JSON ({e}).") from e


def modalities_of(description: dict) -> list[str]:
  names = description.get("modality") or description.get("channel_names")
  if not names:
    raise UserError("dataset.json: no 'modality' (or 'channel_names') entry.")
  return [names[k] for k in sorted(names, key=int)]


def labels_of(description: dict) -> dict[int, str]:
  labels = description.get("labels")
  if not labels:
    raise UserError("dataset.json: no 'labels' entry.")
  if all(str(k).isdigit() for k in labels):  # MSD: {"0": "background"}
    return {int(k): v for k, v in labels.items()}
  return {int(v): k for k, v in labels.items()}  # nnU-Net v2: {"background": 0}


def channel_files(source_dir: str, image: str, channels: int) -> list[str]:
  """The file of each channel: ``image`` itself, or nnU-Net's ``<case>_XXXX`` files."""
  path = os.path.normpath(os.path.join(source_dir, image))
  if os.path.exists(path):
    return [path]
  stem = next((path[: -len(e)] for e in NIFTI if path.endswith(e)), path)
  files = [f"{stem}_{c:04d}.nii.gz" for c in range(channels)]
  missing = [f for f in files if not os.path.exists(f)]
  if missing:
    raise UserError(f"dataset 'msd': image {path} not found (nor {missing[0]}).")
  return files


def list_cases(source_dir: str, description: dict, max_cases: int = 0) -> dict:
  """``{case: (image files, label file)}`` of dataset.json's training list."""
  channels = len(modalities_of(description))
  cases = {}
  for entry in description.get("training", []):
    label = os.path.normpath(os.path.join(source_dir, entry["label"]))
    if not os.path.exists(label):
      raise UserError(f"dataset 'msd': label file {label} (listed in dataset.json) not found.")
    name = os.path.basename(label)
    name = next((name[: -len(e)] for e in NIFTI if name.endswith(e)), name)
    cases[name] = (channel_files(source_dir, entry["image"], channels), label)
  if not cases:
    raise UserError(f"dataset 'msd': dataset.json in {source_dir} lists no training cases.")
  names = sorted(cases)[: max_cases or None]
  return {n: cases[n] for n in names}


def list_unlabeled(source_dir: str, description: dict, max_cases: int = 0) -> dict:
  """``{case: (image files, None)}`` of the cases without labels: dataset.json's
  ``test`` list (MSD), else every NIfTI case of ``imagesTs/`` (nnU-Net)."""
  channels, listed = len(modalities_of(description)), description.get("test") or []
  if not listed and os.path.isdir(os.path.join(source_dir, "imagesTs")):
    files = sorted(os.listdir(os.path.join(source_dir, "imagesTs")))
    stems = {re.sub(r"(_\d{4})?\.nii(\.gz)?$", "", f) for f in files if f.endswith(NIFTI)}
    listed = [f"imagesTs/{s}.nii.gz" for s in sorted(stems)]
  cases = {}
  for entry in listed:
    entry = entry["image"] if isinstance(entry, dict) else entry
    name = re.sub(r"\.nii(\.gz)?$", "", os.path.basename(entry))
    cases[name] = (channel_files(source_dir, entry, channels), None)
  names = sorted(cases)[: max_cases or None]
  return {n: cases[n] for n in names}


def read_sites(path: str, names) -> dict:
  """``{case: site index}`` from a ``case,site`` CSV (sites numbered in sorted order)."""
  if not os.path.exists(path):
    raise UserError(f"config.data.kwargs.sites: {path} not found.")
  with open(path, newline="") as f:
    rows = [r for r in csv.reader(f) if r and not r[0].startswith("#")]
  rows = [r for r in rows if r[0] != "case"]  # a header line
  bad = [r for r in rows if len(r) != 2]
  if bad:
    raise UserError(f"{path}: expected 'case,site' lines, found {','.join(bad[0])!r}.")
  sites = {case.strip(): site.strip() for case, site in rows}
  missing = sorted(set(names) - set(sites))
  if missing:
    raise UserError(f"{path}: no site for case {missing[0]!r} ({len(missing)} cases without).")
  index = {s: i for i, s in enumerate(sorted(set(sites.values())))}
  return {n: index[sites[n]] for n in names}


def split_cases(names, folds: int, fold: int, validation_fraction: float, seed: int) -> dict:
  """Test = fold ``fold`` of ``folds`` (cases shuffled by ``seed``); validation =
  ``validation_fraction`` of the rest (at least one case)."""
  if not 0 <= fold < folds:
    raise UserError(f"config.data.kwargs.fold={fold} must be in [0, {folds}).")
  order = list(np.random.default_rng(seed).permutation(sorted(names)))
  test = order[fold::folds]
  rest = [n for n in order if n not in set(test)]
  n_val = max(1, int(round(validation_fraction * len(rest))))
  if len(rest) - n_val < 1:
    raise UserError(f"dataset 'msd': {len(names)} cases are too few for {folds} folds.")
  return {"train": sorted(rest[n_val:]), "validation": sorted(rest[:n_val]), "test": sorted(test)}


def load(source_dir: str | None, cache_dir: str, **kwargs) -> VolumeData:
  """The prepared dataset (from the cache, or prepared now and cached)."""
  settings = Settings(**kwargs)
  source_dir = folder.require_dir(source_dir, "msd")
  description = read_description(source_dir)
  files = list_cases(source_dir, description, settings.max_cases)
  if settings.unlabeled:
    files.update(list_unlabeled(source_dir, description, settings.max_cases))
  items = [
    folder.Item(n, (*images, *filter(None, [label])), None) for n, (images, label) in files.items()
  ]
  key = folder.fingerprint(dataclasses.asdict(settings), items)
  where = os.path.join(cache_dir, "volumes", f"msd_{key}")
  if not os.path.exists(os.path.join(where, "plan.json")):
    prepare(files, description, settings, where)
  try:
    plan, cases = read_cache(where, files)
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    # npz files are zip archives: a truncated or altered one fails its CRC-32 here.
    print(f"Prepared volumes {where} are damaged ({e}); preparing them again.")
    shutil.rmtree(where, ignore_errors=True)
    prepare(files, description, settings, where)
    plan, cases = read_cache(where, files)
  labeled = sorted(n for n, f in files.items() if f[1])
  if settings.site:
    splits = {"train": labeled}
  else:
    splits = split_cases(
      labeled, settings.folds, settings.fold, settings.validation_fraction, settings.seed
    )
  splits["unlabeled"] = sorted(n for n, f in files.items() if not f[1])
  if settings.sites:
    for name, site in read_sites(settings.sites, labeled).items():
      cases[name]["site"] = site
  return VolumeData(plan, cases, splits)


def read_cache(where: str, files: dict) -> tuple[dict, dict]:
  """``(plan, cases)`` as :func:`prepare` wrote them in ``where``."""
  with open(os.path.join(where, "plan.json")) as f:
    plan = json.load(f)
  cases = {}
  for name in files:
    with np.load(os.path.join(where, f"{name}.npz")) as z:
      cases[name] = {
        "image": z["image"],
        "labels": z["labels"],
        "meta": Meta.from_json(json.loads(str(z["meta"]))),
        "label_file": files[name][1],
      }
  return plan, cases


def read_case(files, known_labels):
  """``(image, affine, labels)`` of a case (labels: zeros for a case without them)."""
  paths, label_path = files
  image, affine, _ = volumes.load_channels(paths)
  if label_path is None:
    return image, affine, np.zeros(image.shape[:3], np.uint8)
  labels, label_affine, _ = volumes.read(label_path)
  if labels.shape != image.shape[:3]:
    raise UserError(
      f"{label_path}: label shape {labels.shape} differs from the image's {image.shape[:3]}."
    )
  if not np.allclose(label_affine, affine, atol=1e-3):
    raise UserError(f"{label_path}: affine differs from the image's ({paths[0]}).")
  return image, affine, volumes.check_labels(labels, known_labels, label_path)


def foreground_samples(raw, channel: int) -> np.ndarray:
  """Intensities of ``channel`` over the foreground voxels of every case of ``raw``
  (``(image, affine, labels)`` each; up to 10,000 per case, drawn with a fixed seed)."""
  rng = np.random.default_rng(0)
  fg = [image[labels > 0][:, channel] for image, _, labels in raw]
  fg = [rng.choice(v, min(len(v), 10000), replace=False) for v in fg if len(v)]
  return np.concatenate(fg) if fg else np.zeros(0, np.float32)


def ct_plan(raw, modalities) -> dict | None:
  """CT statistics of each CT channel over the foreground voxels of every case."""
  raw = list(raw)
  stats = {
    str(c): volumes.ct_statistics(foreground_samples(raw, c))
    for c, modality in enumerate(modalities)
    if modality.upper() == volumes.CT
  }
  return stats or None


def raw_foreground(source_dir: str, max_cases: int = 0) -> dict:
  """``{modality: foreground intensities}`` of the cases as stored (before any
  normalisation): what nnU-Net's fingerprint reports."""
  description = read_description(source_dir)
  labels = labels_of(description)
  raw = [read_case(f, labels) for f in list_cases(source_dir, description, max_cases).values()]
  return {m: foreground_samples(raw, c) for c, m in enumerate(modalities_of(description))}


def prepare(files: dict, description: dict, settings: Settings, where: str) -> None:
  """Reads every case, plans (spacing, CT statistics) and writes the cache atomically."""
  modalities, labels = modalities_of(description), labels_of(description)
  raw = {n: read_case(f, labels) for n, f in files.items()}
  labeled = [raw[n] for n, f in files.items() if f[1]]  # the plan is the labeled cases'
  target = settings.target_spacing
  if not target:
    target = np.median([volumes.canonical_spacing(a) for _, a, _ in labeled], 0).tolist()
  target = tuple(float(t) for t in target)
  ct = settings.ct_statistics or ct_plan(labeled, modalities)
  tmp = where + ".tmp"
  os.makedirs(tmp, exist_ok=True)
  shapes = []
  for name, (image, affine, lab) in raw.items():
    img, lab, meta = volumes.prepare_case(image, affine, lab, target, modalities, ct)
    if files[name][1]:
      shapes.append(img.shape[:3])
    meta = json.dumps(meta.to_json())
    np.savez(os.path.join(tmp, f"{name}.npz"), image=img, labels=lab, meta=meta)
  plan = dict(
    modalities=modalities,
    labels={str(k): v for k, v in sorted(labels.items())},
    target_spacing=list(target),
    ct_statistics=ct,
    median_shape=[int(s) for s in np.median(shapes, 0)],
    max_shape=[int(s) for s in np.max(shapes, 0)],
  )
  with open(os.path.join(tmp, "plan.json"), "w") as f:
    json.dump(plan, f, indent=2)
  os.makedirs(os.path.dirname(where), exist_ok=True)
  if os.path.exists(where):  # a half-written cache of an earlier, killed preparation
    shutil.rmtree(where)
  os.replace(tmp, where)
