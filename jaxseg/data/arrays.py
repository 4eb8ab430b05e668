"""Prepared splits as plain arrays: one memory-mapped ``.npy`` file per field.

The array_record files TFDS writes hold zlib-compressed tensors, and decoding them
example by example costs milliseconds per example (measured: docs/performance.md, input
pipeline). The first time a split is opened it is decoded once into
``<builder data_dir>/arrays/<split>/{image,mask,annotators,site}.npy`` (written in a
temporary folder and renamed, so an interrupted preparation leaves nothing half
written); from then on reading an example is a slice of a memory map, and a whole
split (or any subset) is one fancy index — what the device-resident path uploads.

``manifest.json`` beside the arrays records each file's size and CRC-32; a split
whose files are missing, truncated or altered (a disk that filled up, a copy cut
short, a stray write) is found when it is opened and decoded again, with a one-line
note — never read as garbage. Checking costs one read of the files (CRC-32 runs at
several GB/s).

The U-Net paper's weight map is a deterministic function of the mask: with
``weight_map.w0 > 0`` it is computed once per split and these settings and kept
beside the arrays (``weights_w0=<w0>_sigma=<sigma>.npy``), so the training loop, the
evaluation and the device never compute it again.
"""

import json
import os
import shutil
import tempfile
import zlib

import numpy as np

from jaxseg.data import weight_map

FIELDS = ("image", "mask", "annotators", "site")
MANIFEST = "manifest.json"


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
  """The prepared ``split`` of ``builder`` as :class:`Arrays` (decoded on first use, and
  again if damaged), with its pixel weights if ``weight_config.w0 > 0``."""
  directory = os.path.join(builder.data_dir, "arrays", split)
  fields = [f"{name}.npy" for name in FIELDS]
  if os.path.exists(directory):
    problem = damage(directory, fields)
    if problem:
      old = not os.path.exists(os.path.join(directory, MANIFEST))
      why = f"predate {MANIFEST}" if old else f"are damaged ({problem})"
      print(f"Prepared arrays {directory} {why}; decoding them again{', once' if old else ''}.")
      shutil.rmtree(directory, ignore_errors=True)
  if not os.path.exists(directory):
    _decode(builder.as_data_source(split), directory)
  weights = None
  if weight_config is not None and weight_config.w0 > 0:
    weights = f"weights_w0={weight_config.w0:g}_sigma={weight_config.sigma:g}.npy"
    if damage(directory, [weights]):  # missing, or damaged: computed (again)
      masks = np.load(_path(directory, "mask"), mmap_mode="r")
      maps = np.stack(
        [weight_map.weight_map(m, weight_config.w0, weight_config.sigma) for m in masks]
      )
      _save_atomic(directory, weights, maps)
  return Arrays(directory, weights)


def _summary(path: str) -> dict:
  """Size and CRC-32 of the file at ``path`` (read in 64 MiB pieces)."""
  crc = 0
  with open(path, "rb") as f:
    while piece := f.read(64 << 20):
      crc = zlib.crc32(piece, crc)
  return {"bytes": os.path.getsize(path), "crc32": crc}


def _manifest(directory: str) -> dict:
  try:
    with open(os.path.join(directory, MANIFEST)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def damage(directory: str, files: list[str]) -> str | None:
  """What is wrong with ``files`` of ``directory`` against its manifest, or None."""
  manifest = _manifest(directory)
  for name in files:
    path = os.path.join(directory, name)
    if name not in manifest or not os.path.exists(path):
      return f"{name} is missing" if name in manifest else f"{name} is not in {MANIFEST}"
    expected, found = manifest[name], _summary(path)
    if found["bytes"] != expected["bytes"]:
      return f"{name} has {found['bytes']:,} bytes, {expected['bytes']:,} were written"
    if found["crc32"] != expected["crc32"]:
      return f"{name} was altered: its CRC-32 differs from the one written"
  return None


def _write_manifest(directory: str, files: list[str]) -> None:
  """Adds ``files`` (written in ``directory``) to its manifest, replaced whole."""
  manifest = _manifest(directory)
  manifest.update({name: _summary(os.path.join(directory, name)) for name in files})
  staging = os.path.join(directory, f".{MANIFEST}.{os.getpid()}")
  with open(staging, "w") as f:
    json.dump(manifest, f, indent=1)
  os.replace(staging, os.path.join(directory, MANIFEST))


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
  _write_manifest(staging, [f"{name}.npy" for name in FIELDS])
  try:
    os.rename(staging, directory)
  except OSError:  # another process finished first: its arrays are the same
    shutil.rmtree(staging)


def _save_atomic(directory: str, name: str, value: np.ndarray) -> None:
  path = os.path.join(directory, name)
  staging = f"{path}.{os.getpid()}.tmp.npy"
  np.save(staging, value)
  os.replace(staging, path)
  _write_manifest(directory, [name])
