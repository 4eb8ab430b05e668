"""``jaxseg inspect --config FILE``: a dataset's fingerprint and the settings a run of
that config would use, printed, written as ``dataset.md`` beside the prepared data
(the dataset's cache folder) and, with ``--json F``, as JSON.

Every source file of a folder dataset is read first and every problem (unreadable
files, unmatched stems, size mismatches) is listed at once; then the data are
prepared (or found in the cache) and every split as the config carves it is
profiled (:mod:`jaxseg.data.profile`).
"""

import json
import os

from jaxseg import models
from jaxseg.data import image_folder, pipeline, profile
from jaxseg.run.experiment import check_config, fit_model_to_data, resolve_data


def run(config, json_path: str | None = None) -> dict:
  check_config(config)
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
  text = profile.markdown(report)
  path = os.path.join(builder.data_dir, "dataset.md")
  with open(path, "w") as f:
    f.write(text)
  print(text + f"\n(written to {path})")
  if json_path:
    with open(json_path, "w") as f:
      json.dump(report, f, indent=2, default=str)
  return report
