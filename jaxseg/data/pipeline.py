"""Input pipeline: prepared TFDS splits read through grain, without TensorFlow.

Training batches come from a ``grain.DataLoader`` (seeded shuffling, infinite epochs,
batching, iterator state that checkpoints and resumes exactly). Evaluation iterates a
split in order in fixed-size batches; the last one is padded and carries a ``valid``
flag, so the compiled evaluation step sees a single shape.
"""

import bisect
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from jaxseg import data as datasets
from jaxseg.data import arrays, weathering
from jaxseg.errors import UserError


class Subset:
  """A random-access view of ``source`` restricted to ``indices``."""

  def __init__(self, source, indices):
    self.source, self.indices = source, np.asarray(indices)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]

  def take(self, indices, fields=None) -> dict:
    return self.source.take(self.indices[np.asarray(indices, np.int64)], fields)

  def __repr__(self) -> str:
    # Stable across processes: grain stores the data source's repr in its iterator
    # state and refuses to restore into a different one.
    digest = hashlib.sha256(self.indices.astype(np.int64).tobytes()).hexdigest()[:12]
    return f"Subset({self.source!r}, {len(self.indices)} indices, sha256 {digest})"


class Concat:
  """Random access to several sources one after another."""

  def __init__(self, *sources):
    self.sources = sources
    self.starts = np.cumsum([0, *[len(s) for s in sources]])

  def __len__(self) -> int:
    return int(self.starts[-1])

  def __getitem__(self, i):
    which = bisect.bisect_right(self.starts, i) - 1
    return self.sources[which][int(i - self.starts[which])]

  def take(self, indices, fields=None) -> dict:
    indices = np.asarray(indices, np.int64)
    which = np.searchsorted(self.starts, indices, side="right") - 1
    parts = [
      s.take(indices[which == i] - self.starts[i], fields) for i, s in enumerate(self.sources)
    ]
    order = np.argsort(np.argsort(which, kind="stable"), kind="stable")  # back to ``indices``
    return {k: np.concatenate([p[k] for p in parts])[order] for k in parts[0]}

  def __repr__(self) -> str:
    return f"Concat({', '.join(repr(s) for s in self.sources)})"


def _permutation(size: int, seed: int) -> np.ndarray:
  return np.asarray(jax.random.permutation(jax.random.key(seed), size))


def fold_indices(size: int, folds: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """``(rest, held_out)`` indices of fold ``fold`` of a seeded ``folds``-fold split."""
  if not 0 <= fold < folds or folds > size:
    raise UserError(
      f"config.data.fold={fold} with config.data.folds={folds}: need 0 <= fold < folds <= "
      f"{size} (the training examples)."
    )
  held = np.sort(np.array_split(_permutation(size, seed), folds)[fold])
  return np.setdiff1d(np.arange(size), held), held


def carve(indices: np.ndarray, fraction: float, seed: int, what: str) -> tuple:
  """Splits ``indices`` into ``(rest, carved)`` with ``round(fraction * n)`` (>= 1) carved."""
  count = max(1, round(fraction * len(indices))) if fraction > 0 else 0
  if count == 0 or count >= len(indices):
    raise UserError(
      f"config.data.{what}_fraction={fraction} leaves no {what} or no training examples "
      f"out of {len(indices)}."
    )
  order = indices[_permutation(len(indices), seed)]
  return np.sort(order[count:]), np.sort(order[:count])


def prepare(data_config):
  """The TFDS builder of ``data_config``, its splits prepared (once, cached in
  ``builder.data_dir``, with the builder's settings as ``settings.json`` there)."""
  builder = datasets.make_builder(
    data_config.name,
    source_dir=data_config.dir,
    cache_dir=data_config.cache_dir,
    **data_config.kwargs,
  )
  tfds.disable_progress_bar()
  builder.download_and_prepare(file_format="array_record")
  settings = getattr(builder, "settings", None)
  if dataclasses.is_dataclass(settings):
    settings = dataclasses.asdict(settings)
  path = os.path.join(builder.data_dir, "settings.json")
  if settings is not None and not os.path.exists(path):
    with open(f"{path}.{os.getpid()}.tmp", "w") as f:
      json.dump(settings, f, indent=2, default=str)
    os.replace(f"{path}.{os.getpid()}.tmp", path)
  return builder


def load_splits(data_config, splits=datasets.SPLITS) -> dict:
  """Prepares (once, cached) and opens ``splits`` of ``data_config.name``.

  Splits a dataset does not store are carved, seeded by ``data_config.fold_seed``,
  from its training split: with ``folds > 0`` (k-fold cross-validation) fold
  ``fold`` is the ``test`` split; otherwise a missing ``test`` split is
  ``test_fraction`` of it. A missing ``validation`` split is ``validation_fraction``
  of what remains. Raises if a split ends up empty. With ``train``, a dataset's
  ``unlabeled`` split (images without masks) comes too, for the semi-supervised and
  federated methods' unlabeled pools.

  ``data_config.unlabeled_dir``: a folder of images without masks that is the
  ``unlabeled`` split instead (:func:`unlabeled_pool`).

  ``data_config.extra_train_dir``: an ``image_folder`` dataset (e.g. written by
  ``jaxseg synthesize``) whose every pair joins the training split only, brought to
  the dataset's image size; its masks are read with the ``mask_values`` its
  ``synthesis.json`` names (0/255 binary otherwise).
  """
  builder = prepare(data_config)
  stored = {k: v.num_examples for k, v in builder.info.splits.items() if v.num_examples}
  if "train" not in stored:
    raise UserError(f"dataset {data_config.name!r}: split 'train' has no examples.")
  train = arrays.open_split(builder, "train", data_config.weight_map)
  rest, views, seed = np.arange(stored["train"]), {}, data_config.fold_seed
  if data_config.folds:
    rest, views["test"] = fold_indices(len(rest), data_config.folds, data_config.fold, seed)
  elif "test" not in stored:  # carved whatever ``splits`` asks for: the same train split
    rest, views["test"] = carve(rest, data_config.test_fraction, seed, "test")
  if "validation" not in stored:
    rest, views["validation"] = carve(rest, data_config.validation_fraction, seed + 1, "validation")
  views["train"] = rest
  sources = {}
  for split in splits:
    if split == "train" and data_config.extra_train_dir:
      own = Subset(train, views[split])
      sources[split] = Concat(own, extra_train(data_config, own[0]["image"].shape))
    elif split in views:
      sources[split] = Subset(train, views[split])
    elif split in stored:
      sources[split] = arrays.open_split(builder, split, data_config.weight_map)
    else:
      raise UserError(
        f"dataset {data_config.name!r}: split {split!r} has no examples (check config.data.kwargs)."
      )
  if "train" in splits and data_config.unlabeled_dir:
    sources["unlabeled"] = unlabeled_pool(data_config, train[0]["image"].shape)
  elif "train" in splits and "unlabeled" in stored:
    # Images without masks (all-zero masks and weights, never used as labels).
    sources["unlabeled"] = arrays.open_split(builder, "unlabeled", data_config.weight_map)
  return sources


def site_images(data_config) -> tuple:
  """``(source, images, pool)``: everything a federated site's folder
  ``data_config.dir`` holds for training — its stored ``train`` split whole (no split
  carved: the site's validation is the server's business), then its images without
  masks (its ``unlabeled`` split) — and the counts of each."""
  builder = prepare(data_config)
  stored = {k for k, v in builder.info.splits.items() if v.num_examples}
  if "train" not in stored:
    raise UserError(f"{data_config.dir}: no training images found ({data_config.name}).")
  train = arrays.open_split(builder, "train", data_config.weight_map)
  if "unlabeled" not in stored:
    return train, len(train), 0
  pool = arrays.open_split(builder, "unlabeled", data_config.weight_map)
  return Concat(train, pool), len(train), len(pool)


def extra_train(data_config, image_shape: tuple):
  """The training split of ``data_config.extra_train_dir`` (see :func:`load_splits`)."""
  folder = data_config.extra_train_dir
  kwargs = {"image_size": tuple(image_shape[:2]), "channels": image_shape[-1]}
  provenance = os.path.join(folder, "synthesis.json")
  if os.path.exists(provenance):
    with open(provenance) as f:
      kwargs["mask_values"] = tuple(tuple(v) for v in json.load(f)["mask_values"])
  builder = datasets.make_builder(
    "image_folder", source_dir=folder, cache_dir=data_config.cache_dir, **kwargs
  )
  builder.download_and_prepare(file_format="array_record")
  return arrays.open_split(builder, "train", data_config.weight_map)


def unlabeled_pool(data_config, image_shape: tuple):
  """The images of ``data_config.unlabeled_dir`` (:mod:`jaxseg.data.unlabeled_folder`)
  at the dataset's image size: its ``unlabeled`` split in their place."""
  builder = datasets.make_builder(
    "unlabeled_folder",
    source_dir=data_config.unlabeled_dir,
    cache_dir=data_config.cache_dir,
    image_size=tuple(image_shape[:2]),
    channels=image_shape[-1],
  )
  tfds.disable_progress_bar()
  builder.download_and_prepare(file_format="array_record")
  return arrays.open_split(builder, "unlabeled", data_config.weight_map)


def labeled_split(source, fraction: float, seed: int) -> tuple:
  """``(labeled, unlabeled)`` views: a seeded ``fraction`` of ``source`` (by image)
  keeps its labels, the rest is used without them. With ``fraction == 1`` every
  image is both labeled and, for the unlabeled objective, unlabeled."""
  size = len(source)
  count = int(np.floor(fraction * size + 0.5))
  if count == 0:
    raise UserError(
      f"config.method.labeled_fraction={fraction} of {size} training images leaves no "
      f"labeled example; raise the fraction or use more data."
    )
  order = _permutation(size, seed + 17)
  if count >= size:
    return Subset(source, np.arange(size)), Subset(source, np.arange(size))
  return Subset(source, np.sort(order[:count])), Subset(source, np.sort(order[count:]))


def model_inputs(record: dict, annotators: bool = False) -> dict:
  """A stored record -> what a step takes: float32 image in [0, 1], int32 labels, the
  stored pixel weights if any, and with ``annotators`` every rater's mask ``[A, H, W]``.

  The same function of numpy arrays (the host path) and of jax arrays (inside the
  jitted step of the device-resident path), so both feed identical values.
  """
  out = {
    "image": record["image"].astype(np.float32) / 255.0,
    "labels": record["mask"].astype(np.int32),
  }
  if annotators:
    out["annotators"] = record["annotators"].astype(np.int32)
  if "weights" in record:
    out["weights"] = record["weights"]
  return out


class ToModelInputs(grain.transforms.Map):
  """:func:`model_inputs` as a grain transform."""

  def __init__(self, annotators: bool = False):
    self.annotators = annotators

  def map(self, record):
    return model_inputs(record, self.annotators)


class Weathering(grain.transforms.RandomMap):
  """JPEG re-compression with probability ``p`` (the grain-seeded ``rng`` decides)."""

  def __init__(self, jpeg):
    self.jpeg = jpeg

  def random_map(self, element, rng: np.random.Generator):
    if rng.random() < self.jpeg.p:
      element = {
        **element,
        "image": weathering.recompress(element["image"], self.jpeg.qualities, self.jpeg.repeats),
      }
    return element


class ProcessSlice:
  """A grain sampler of one process's slice of every global batch.

  Position ``k`` of process ``p`` of ``n`` (local batches of ``b = B / n``) is
  position ``(k // b) * B + p * b + k % b`` of ``sampler``: each process reads only
  its examples, and the processes' batches side by side are exactly the batch one
  process would read (same examples, order and per-record randomness).
  """

  def __init__(self, sampler, batch_size: int, index: int, count: int):
    self._inner, self._batch, self._index, self._count = sampler, batch_size, index, count
    self._local = batch_size // count
    self._shard_options = grain.sharding.NoSharding()

  def __getitem__(self, k: int) -> grain.RecordMetadata:
    position = (k // self._local) * self._batch + self._index * self._local + k % self._local
    meta = self._inner[position]
    return grain.RecordMetadata(index=k, record_key=meta.record_key, rng=meta.rng)

  def __len__(self) -> int:
    return len(self._inner) // self._count

  def __repr__(self) -> str:
    return f"ProcessSlice({self._inner!r}, batch {self._batch}, {self._index} of {self._count})"


def train_loader(
  source,
  batch_size: int,
  seed: int,
  data_config=None,
  process: tuple[int, int] = (0, 1),
  workers: int = 0,
) -> grain.DataLoader:
  """Infinite, seeded, shuffled batches of ``batch_size`` (last partial batch dropped).

  A source smaller than one batch is repeated so that a batch can be filled.
  ``process = (index, count)``: this process's slice of each global batch
  (:class:`ProcessSlice`), ``batch_size / count`` examples. ``workers``: grain worker
  processes (0: in this thread); the batches are deterministic for each count (grain
  gives each record its own seeded randomness), and differ between counts.

  ``data_config`` adds the host-side steps it enables: JPEG weathering (non-empty
  ``jpeg.qualities``) and every rater's mask (``annotator = "random"``: each step
  trains on one drawn at random, :func:`jaxseg.data.augment.pick_annotator`).
  """
  if len(source) == 0:
    raise UserError("the training split has no examples.")
  if len(source) < batch_size:  # e.g. a small labeled fraction: repeat it within the batch
    source = Subset(source, np.tile(np.arange(len(source)), -(-batch_size // len(source))))
  sampler = grain.samplers.IndexSampler(
    num_records=len(source),
    shuffle=True,
    seed=seed,
    num_epochs=None,
    shard_options=grain.sharding.NoSharding(),
  )
  index, count = process
  if count > 1:
    sampler = ProcessSlice(sampler, batch_size, index, count)
  random_rater = data_config is not None and data_config.annotator == "random"
  operations = [ToModelInputs(annotators=random_rater)]
  if data_config is not None and data_config.jpeg.qualities:
    operations.append(Weathering(data_config.jpeg))
  operations.append(grain.transforms.Batch(batch_size // count, drop_remainder=True))
  return grain.DataLoader(
    data_source=source, sampler=sampler, worker_count=workers, operations=operations
  )


def eval_batches(source, batch_size: int, annotators: bool = False) -> Iterator[dict]:
  """All examples in order, in batches of ``batch_size``, padded, with ``valid``."""
  for start in range(0, len(source), batch_size):
    count = min(batch_size, len(source) - start)
    indices = start + np.minimum(np.arange(batch_size), count - 1)  # pad with the last
    batch = model_inputs(source.take(indices), annotators)
    batch["valid"] = np.arange(batch_size) < count
    yield batch
