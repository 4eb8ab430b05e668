"""Prepared splits as plain arrays: one memory-mapped ``.npy`` file per field.

The array_record files TFDS writes hold zlib-compressed tensors, and decoding them
example by example costs milliseconds per example (measured: README, input
pipeline). The first time a split is opened it is decoded once into
``<builder data_dir>/arrays/<split>/{image,mask,annotators,site}.npy`` (written in a
temporary folder and renamed, so an interrupted preparation leaves nothing half
written); from then on reading an example is a slice of a memory map, and a whole
split (or any subset) is one fancy index — what the device-resident path uploads.

The U-Net paper's weight map is a deterministic function of the mask: with
``weight_map.w0 > 0`` it is computed once per split and these settings and kept
beside the arrays (``weights_w0=<w0>_sigma=<sigma>.npy``), so the training loop, the
evaluation and the device never compute it again.
"""

import os
import shutil
import tempfile

import numpy as np

from jaxseg.data import weight_map

FIELDS = ("image", "mask", "annotators", "site")


class InMemory:
  """Random access to examples held as arrays ``{field: [N, ...]}`` (a grain data source)."""

  def __init__(self, fields: dict):
    self.fields = fields

  def __len__(self) -> int:
    return len(self.fields["image"])

  def __getitem__(self, i):
    return {name: np.asarray(value[i]) for name, value in self.fields.items()}

  def take(self, indices, fields=None) -> dict:
    """The examples ``indices`` as arrays ``{field: [len(indices), ...]}`` (only
    ``fields``, if given: the others are not read)."""
    indices = np.asarray(indices, np.int64)
    names = self.fields if fields is None else fields
    return {name: np.asarray(self.fields[name][indices]) for name in names}


class Arrays(InMemory):
  """A split stored by :func:`open_split`, read through memory maps."""

  def __init__(self, directory: str, weights: str | None = None):
    self.directory, self.weights = directory, weights
    fields = {name: np.load(_path(directory, name), mmap_mode="r") for name in FIELDS}
    if weights is not None:
      fields["weights"] = np.load(os.path.join(directory, weights), mmap_mode="r")
    super().__init__(fields)

  def __reduce__(self):  # grain workers reopen the memory maps instead of copying them
    return Arrays, (self.directory, self.weights)

  def __repr__(self) -> str:
    # Stable across processes: grain keeps the source's repr in its iterator state.
    return f"Arrays({self.directory!r}{', ' + self.weights if self.weights else ''})"


def _path(directory: str, name: str) -> str:
  return os.path.join(directory, f"{name}.npy")


def open_split(builder, split: str, weight_config=None) -> Arrays:
  """The prepared ``split`` of ``builder`` as :class:`Arrays` (decoded on first use),
  with its pixel weights if ``weight_config.w0 > 0``."""
  directory = os.path.join(builder.data_dir, "arrays", split)
  if not os.path.exists(_path(directory, FIELDS[-1])):
    _decode(builder.as_data_source(split), directory)
  weights = None
  if weight_config is not None and weight_config.w0 > 0:
    weights = f"weights_w0={weight_config.w0:g}_sigma={weight_config.sigma:g}.npy"
    if not os.path.exists(os.path.join(directory, weights)):
      masks = np.load(_path(directory, "mask"), mmap_mode="r")
      maps = np.stack(
        [weight_map.weight_map(m, weight_config.w0, weight_config.sigma) for m in masks]
      )
      _save_atomic(os.path.join(directory, weights), maps)
  return Arrays(directory, weights)


def _decode(source, directory: str) -> None:
  """Every example of ``source`` into one ``.npy`` per field, moved into place whole."""
  first = source[0]
  out = {
    name: np.empty((len(source), *np.shape(first[name])), np.asarray(first[name]).dtype)
    for name in FIELDS
  }
  for i in range(len(source)):
    record = source[i]
    for name in FIELDS:
      out[name][i] = record[name]
  parent = os.path.dirname(directory)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".arrays-", dir=parent)
  for name, value in out.items():
    np.save(_path(staging, name), value)
  try:
    os.rename(staging, directory)
  except OSError:  # another process finished first: its arrays are the same
    shutil.rmtree(staging)


def _save_atomic(path: str, value: np.ndarray) -> None:
  staging = f"{path}.{os.getpid()}.tmp.npy"
  np.save(staging, value)
  os.replace(staging, path)
