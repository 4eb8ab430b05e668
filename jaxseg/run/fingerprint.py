"""``jaxseg inspect --config FILE``: a dataset's fingerprint and the settings a run of
that config would use, printed, written as ``dataset.md`` beside the prepared data
(the dataset's cache folder) and, with ``--json F``, as JSON.

A volume dataset (nnU-Net's fingerprint): cases, shapes, voxel spacings (median,
anisotropy), foreground intensities per modality as stored, voxels per class, and
the plan a run would use (target spacing, patch size, pooling plan).

Every source file of a folder dataset is read first and every problem (unreadable
files, unmatched stems, size mismatches) is listed at once; then the data are
prepared (or found in the cache) and every split as the config carves it is
profiled (:mod:`jaxseg.data.profile`).
"""

import copy
import json
import os

from jaxseg import models
from jaxseg.data import image_folder, msd, pipeline, profile
from jaxseg.errors import UserError
from jaxseg.run import volume
from jaxseg.run.experiment import check_config, fit_model_to_data, is_volume, resolve_data


def run(config, json_path: str | None = None) -> dict:
  check_config(config)
  if is_volume(config):
    return _write(_volumes(config), json_path, profile.volume_markdown, None)
  config, notes = resolve_data(config)
  builder = pipeline.prepare(config.data)
  sources = pipeline.load_splits(config.data)
  config = fit_model_to_data(config, sources, notes)
  interface = models.get_model(config.model.name, **config.model.kwargs).interface
  settings = {
    **config.data.kwargs.to_dict(),
    "model.in_channels": interface.in_channels,
    "model.num_classes": interface.num_classes,
  }
  report = {
    "dataset": config.data.name,
    "dir": config.data.dir,
    "settings": settings,
    "notes": notes,
    "splits": {name: profile.split_profile(source) for name, source in sources.items()},
  }
  if config.data.name == "image_folder":
    found = image_folder.scan(config.data.dir, tuple(config.data.kwargs.mask_suffixes))
    report["files"] = profile.files_profile(found)
  return _write(report, json_path, profile.markdown, os.path.join(builder.data_dir, "dataset.md"))


def _volumes(config) -> dict:
  """The fingerprint of a volume dataset and the plan a run of ``config`` would use.
  A fingerprint needs no folds: an ``msd`` folder of too few cases for them is read
  as a site's (every labeled case a training case)."""
  notes = []
  try:
    data = volume.load(config)
  except UserError as error:
    if config.data.name != "msd" or "too few" not in str(error):
      raise
    config = copy.deepcopy(config)
    with config.unlocked():
      config.data.kwargs.site = True
    data = volume.load(config)
    notes.append(f"{error} (for a run); the fingerprint reads every case")
  config = volume.resolve(config, data.plan, notes)
  intensities = None
  if config.data.name == "msd":  # as stored, before normalisation (nnU-Net's fingerprint)
    intensities = msd.raw_foreground(config.data.dir, config.data.kwargs.max_cases)
  kwargs = config.model.kwargs
  plan = {
    "target_spacing": data.plan["target_spacing"],
    "median_shape": data.plan["median_shape"],
    "patch_size": list(config.volume.patch_size),
    "pooling": [list(k) for k in kwargs.get("pool") or [(2, 2, 2)] * (len(kwargs.widths) - 1)],
    "in_channels": kwargs.in_channels,
    "num_classes": kwargs.num_classes,
    "ct_statistics": data.plan["ct_statistics"],
  }
  return {
    "dataset": config.data.name,
    "dir": config.data.dir,
    "profile": profile.volume_profile(data, intensities),
    "plan": plan,
    "notes": notes,
  }


def _write(report: dict, json_path, to_text, path) -> dict:
  """Prints ``report`` and writes it as text to ``path`` (if any) and JSON."""
  text = to_text(report)
  if path:
    with open(path, "w") as f:
      f.write(text)
  print(text + (f"\n(written to {path})" if path else ""))
  if json_path:
    with open(json_path, "w") as f:
      json.dump(report, f, indent=2, default=str)
  return report
