"""Datasets (TFDS builders read without TensorFlow) and their name table.

Every entry is a function ``make_builder(source_dir, data_dir, **kwargs)`` returning
a TFDS builder whose examples follow :mod:`jaxseg.data.records`. Prepared splits are
array_record files under ``data_dir`` (the cache), in a folder named by a hash of the
builder's settings (and of the source files for datasets read from a directory), so
a changed setting never reuses stale data and nothing is written into ``source_dir``.
"""

import contextlib
import os
import tempfile

from jaxseg import tables

DATASETS = {
  "synthetic_nerve": "jaxseg.data.synthetic_nerve:make_builder",
  "isbi2012": "jaxseg.data.isbi2012:make_builder",
  "covid_ct_lesion": "jaxseg.data.covid_ct:make_builder",
  "lidc_multirater": "jaxseg.data.lidc:make_builder",
  "image_folder": "jaxseg.data.image_folder:make_builder",
  "unlabeled_folder": "jaxseg.data.unlabeled_folder:make_builder",
}

# Datasets whose settings may say ``auto``: ``resolve(source_dir, kwargs, stride) ->
# (kwargs, notes)`` replaces each by what the data say.
RESOLVERS = {
  "image_folder": "jaxseg.data.image_folder:resolve",
}

# Volume datasets (3-D, patch-based training: ``jaxseg.run.volume``): each entry is
# ``load(source_dir, cache_dir, **kwargs) -> msd.VolumeData``.
VOLUMES = {
  "msd": "jaxseg.data.msd:load",
  "synthetic_nerve3d": "jaxseg.data.synthetic_volumes:load",
}

SPLITS = ("train", "validation", "test")


def default_cache_dir() -> str:
  """``$JAXSEG_CACHE`` or ``~/.cache/jaxseg``: where prepared datasets are kept."""
  return os.path.expanduser(os.environ.get("JAXSEG_CACHE", "~/.cache/jaxseg"))


def make_builder(name: str, *, source_dir: str | None, cache_dir: str | None, **kwargs):
  """The TFDS builder of dataset ``name`` (see :data:`DATASETS`)."""
  make = tables.resolve(DATASETS, name, "dataset")
  data_dir = os.path.join(cache_dir or default_cache_dir(), "tfds")
  with _scratch_tempdir():
    return make(source_dir=source_dir, data_dir=data_dir, **kwargs)


@contextlib.contextmanager
def _scratch_tempdir():
  """Python's temporary folder pointed, while a builder is made, at one removed after:
  a TFDS builder whose dataset is not prepared yet makes an empty folder for metadata
  it would copy from GCS (``DatasetInfo.initialize_from_bucket``, tensorflow_datasets
  4.9 ``core/dataset_info.py``) and never removes it — one ``/tmp/tmp…tfds`` left per
  dataset prepared."""
  before = tempfile.tempdir
  with tempfile.TemporaryDirectory() as scratch:
    tempfile.tempdir = scratch
    try:
      yield
    finally:
      tempfile.tempdir = before


def load_volumes(name: str, *, source_dir: str | None, cache_dir: str | None, **kwargs):
  """The prepared volumes of dataset ``name`` (see :data:`VOLUMES`)."""
  load = tables.resolve(VOLUMES, name, "volume dataset")
  return load(source_dir, cache_dir or default_cache_dir(), **kwargs)


def resolve(name: str, source_dir: str | None, kwargs: dict, stride: int = 1):
  """``(kwargs, notes)``: dataset ``name``'s settings with ``auto`` values chosen from
  the data (:data:`RESOLVERS`), and what was chosen; other datasets unchanged."""
  if name not in RESOLVERS:
    return kwargs, []
  return tables.resolve(RESOLVERS, name, "dataset")(source_dir, kwargs, stride)
