"""Where a training run's batches come from: the device, or the host ahead of it.

A feed has a ``labeled`` stream and, for a semi-supervised method, an ``unlabeled``
one (:func:`streams`); ``next()`` gives what the compiled step takes and
``batch(inputs, step)`` (inside the step) the step's global batches. One sampling
rule for every device path: epoch ``e`` of a stream of ``n`` examples (images, or a
volume run's cases) is a permutation keyed by the stream's seed and ``e``; batch
``s`` is positions ``s·B … s·B+B−1`` of epoch 0, epoch 1, … (without replacement,
:mod:`jaxseg.data.resident`). The host path follows grain's shuffle, of the same
kind (each epoch a seeded permutation) but with a different permutation, and it drops
a last partial batch. Federated clients follow the device rule over their own
images (:func:`jaxseg.fed.streams.stream_of`).

Volumes (:class:`PatchFeed`): the cases are uploaded once as a padded stack and every
step draws its patches inside the compiled step from the cases of that rule
(:func:`jaxseg.data.patches.sample`; the patch positions keyed by the stream's seed
and the step).

Images, ``config.data.placement``:

* ``device`` — the prepared training split (labeled and unlabeled pools of a
  semi-supervised method) is uploaded once, replicated over the data mesh, and
  every step draws its batch inside the jitted step
  (:mod:`jaxseg.data.resident`): no host work and no transfer per step, and a
  resumed run needs only the step number;
* ``host`` — grain loaders (``config.data.workers`` worker processes) whose batches
  a background thread puts on the device while the current step runs
  (``PREFETCH`` batches ahead); the grain iterator state of the last batch the loop
  *consumed* is what a checkpoint keeps, so resuming is exact;
* ``auto`` — ``device`` when the split's stored arrays fit
  ``config.data.device_budget_mib`` (0: :func:`default_budget_mib`), else ``host``.

JPEG weathering runs on the host, so it forces ``host`` (the log says so).
"""

import dataclasses
import os
import queue
import threading

import jax
import numpy as np
from absl import flags

from jaxseg.data import patches, pipeline, resident
from jaxseg.errors import UserError
from jaxseg.run import volume
from jaxseg.train import sharding

PLACEMENTS = ("auto", "device", "host")
BUDGET_FRACTION = 0.25  # of the memory a device reports (GPU, TPU)
FIXED_BUDGET_MIB = 1024  # where it reports none (CPU)
PREFETCH = 2


def default_budget_mib() -> int:
  """A quarter of the first device's memory where it reports it, else 1024 MiB."""
  stats = jax.local_devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  return int(limit * BUDGET_FRACTION / 2**20) if limit else FIXED_BUDGET_MIB


def workers(setting) -> int:
  """``config.data.workers``: an int, or ``auto`` = ``cpu_count // 2 - 1`` (0 on 2
  cores, where the loop's own thread and XLA need both; at most 8)."""
  if str(setting) == "auto":
    return max(0, min(8, (os.cpu_count() or 1) // 2 - 1))
  try:
    count = int(setting)
  except ValueError:
    count = -1
  if count < 0:
    raise UserError(f"config.data.workers must be 'auto' or a count >= 0, found {setting!r}.")
  return count


def check(data_config) -> None:
  if data_config.placement not in PLACEMENTS:
    raise UserError(
      f"config.data.placement must be one of {PLACEMENTS}, found {data_config.placement!r}."
    )
  workers(data_config.workers)


@dataclasses.dataclass(frozen=True)
class Stream:
  """One training stream: its source (image source, or a volume run's cases), global
  batch size and order seed."""

  source: object
  batch_size: int
  seed: int


def streams(exp) -> dict:
  """``labeled`` (and ``unlabeled`` for a semi-supervised method) :class:`Stream` s.

  ``config.method.labeled_fraction`` of the training images (volumes: cases) keeps its
  labels; the unlabeled pool is the rest plus the dataset's images without masks (an
  ``image_folder``'s ``unlabeled/`` folder; a volume dataset's unlabeled cases)."""
  cfg = exp.config
  fraction = cfg.method.labeled_fraction if "method" in cfg else 1.0
  if exp.volumes is not None:
    names = exp.volumes.data.splits["train"]
    labeled, unlabeled = volume.split_labeled(names, fraction, cfg.seed)
    labeled = [exp.volumes.data.cases[n] for n in labeled]
    unlabeled = [exp.volumes.data.cases[n] for n in unlabeled] + exp.volumes.cases("unlabeled")
  else:
    labeled, unlabeled = pipeline.labeled_split(exp.sources["train"], fraction, cfg.seed)
    if "unlabeled" in exp.sources:
      unlabeled = pipeline.Concat(unlabeled, exp.sources["unlabeled"])
  by_name = {"labeled": Stream(labeled, cfg.train.batch_size, cfg.seed)}
  if "method" in cfg and cfg.method.name != "supervised":
    by_name["unlabeled"] = Stream(unlabeled, cfg.method.unlabeled_batch_size, cfg.seed + 1)
  return by_name


def budget_bytes(data_config) -> int:
  return (data_config.device_budget_mib or default_budget_mib()) * 2**20


def choose(data_config, nbytes: int) -> tuple[str, str]:
  """``(placement, why)`` for training arrays of ``nbytes``."""
  if data_config.jpeg.qualities:
    if data_config.placement == "device":
      raise UserError(
        "config.data.placement='device' with JPEG weathering (config.data.jpeg.qualities), "
        "which runs on the host: use placement 'host' or 'auto'."
      )
    return "host", "JPEG weathering (config.data.jpeg) runs on the host"
  budget = budget_bytes(data_config)
  size = f"{nbytes / 2**20:.1f} MiB of training arrays, budget {budget / 2**20:.0f} MiB"
  if data_config.placement != "auto":
    return data_config.placement, f"config.data.placement; {size}"
  return ("device" if nbytes <= budget else "host"), f"auto: {size}"


def make(exp, mesh):
  """The run's :class:`PatchFeed` (volumes), :class:`DeviceFeed` or :class:`HostFeed`
  (images; see the module docstring).

  ``eval_on_device``: with the training split on the device, whether the validation
  split fits there too (both within the budget; its float32 images take four times
  their stored size).
  """
  by_name = streams(exp)
  if exp.volumes is not None:
    v = exp.config.volume
    return PatchFeed(by_name, exp.volumes.patch, v.oversample, mesh)
  cfg = exp.config.data
  check(cfg)
  annotators = cfg.annotator == "random"
  if cfg.jpeg.qualities:
    return HostFeed(by_name, cfg, mesh, choose(cfg, 0)[1])
  # Sized from one example: a split that goes to the host is never read whole here.
  nbytes = sum(resident.nbytes(s.source, annotators) for s in by_name.values())
  where, why = choose(cfg, nbytes)
  if where == "host":
    return HostFeed(by_name, cfg, mesh, why)
  validation = exp.sources.get("validation")
  extra = 0 if validation is None else 4 * resident.nbytes(validation)
  on_device = validation is not None and nbytes + extra <= budget_bytes(cfg)
  stored = {n: resident.stored(s.source, annotators) for n, s in by_name.items()}
  return DeviceFeed(by_name, stored, annotators, mesh, why, on_device)


def order_key(seed) -> jax.Array:
  """The key of a stream's example order (:mod:`jaxseg.data.resident`)."""
  return jax.random.fold_in(jax.random.key(seed), 1)


class Resident:
  """A feed whose data live on the device: ``next()`` gives the same inputs every step
  and nothing but the step number is needed to resume."""

  where = "device"

  def next(self):
    return self.inputs

  def state(self) -> dict:
    return {}

  def restore(self, state: dict) -> None:
    pass

  def close(self) -> None:
    pass


class DeviceFeed(Resident):
  """The training split on the device; batches drawn inside the step."""

  def __init__(self, by_name, stored, annotators, mesh, why: str, eval_on_device: bool):
    self.why, self.mesh, self.annotators = why, mesh, annotators
    self.eval_on_device = eval_on_device
    self.batch_sizes = {n: s.batch_size for n, s in by_name.items()}
    self.inputs = sharding.put_replicated(
      {n: {"arrays": stored[n], "seed": np.int32(s.seed)} for n, s in by_name.items()}, mesh
    )
    self.input_sharding = sharding.replicated(mesh)

  def batch(self, inputs, step):
    """The global batch of ``step`` (0-based, traced) from the resident ``inputs``."""
    drawn = {
      n: resident.draw(
        x["arrays"], order_key(x["seed"]), step, self.batch_sizes[n], self.annotators
      )
      for n, x in inputs.items()
    }
    return jax.lax.with_sharding_constraint(drawn, sharding.batch_sharding(self.mesh))


class PatchFeed(Resident):
  """A volume run's cases on the device (one padded stack per stream); each step's
  patches drawn inside the step."""

  eval_on_device = False  # validation runs the sliding window case by case

  def __init__(self, by_name: dict, patch: tuple, oversample: float, mesh):
    self.mesh, self.patch, self.oversample = mesh, patch, oversample
    self.batch_sizes = {n: s.batch_size for n, s in by_name.items()}
    stacks = {n: patches.stack(s.source, patch) for n, s in by_name.items()}
    self.inputs = sharding.put_replicated(
      {n: {"stack": stacks[n], "seed": np.int32(s.seed)} for n, s in by_name.items()}, mesh
    )
    self.input_sharding = sharding.replicated(mesh)
    counts = ", ".join(f"{len(s.source)} {n}" for n, s in by_name.items())
    mib = sum(a.nbytes for st in stacks.values() for a in st.values()) / 2**20
    self.why = f"{counts} cases, {mib:.1f} MiB; patches drawn in the step"

  def batch(self, inputs, step):
    """The global batches of ``step`` (0-based, traced): cases by the sampling rule,
    positions keyed by the stream's seed and ``step``."""
    drawn = {}
    for n, x in inputs.items():
      size = self.batch_sizes[n]
      cases = resident.batch_indices(
        order_key(x["seed"]), step, x["stack"]["labels"].shape[0], size
      )
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(x["seed"]), 2), step)
      drawn[n] = patches.sample(key, x["stack"], size, self.patch, self.oversample, cases)
    return jax.lax.with_sharding_constraint(drawn, sharding.batch_sharding(self.mesh))


class Fixed:
  """Inputs that are already a batch on the device (a benchmark's one fixed batch)."""

  def __init__(self, mesh):
    self.input_sharding = sharding.batch_sharding(mesh)

  def batch(self, inputs, step):
    return inputs


class HostFeed:
  """grain loaders on the host, prefetched onto the device by a background thread."""

  where = "host"
  eval_on_device = False

  def __init__(self, by_name: dict, data_config, mesh, why: str):
    self.mesh, self.input_sharding = mesh, sharding.batch_sharding(mesh)
    self.workers = workers(data_config.workers)
    self.why = f"{why}; {self.workers} grain workers"
    if self.workers and not flags.FLAGS.is_parsed():  # grain reads its flags (library use)
      flags.FLAGS.mark_as_parsed()
    process = (jax.process_index(), jax.process_count())  # each its slice of every batch
    self.loaders = {
      n: pipeline.train_loader(s.source, s.batch_size, s.seed, data_config, process, self.workers)
      for n, s in by_name.items()
    }
    self.consumed = {n: None for n in by_name}
    self._thread = None

  def batch(self, inputs, step):
    return inputs

  def restore(self, state: dict) -> None:
    self.consumed.update(state)

  def _start(self) -> None:
    self._queue, self._stop = queue.Queue(PREFETCH), threading.Event()
    its = {}
    for n, loader in self.loaders.items():
      its[n] = iter(loader)
      if self.consumed[n] is not None:
        its[n].set_state(self.consumed[n].encode())
    self._thread = threading.Thread(target=self._fill, args=(its,), daemon=True)
    self._thread.start()

  def _fill(self, its: dict) -> None:
    try:
      while not self._stop.is_set():
        host = {n: next(it) for n, it in its.items()}
        states = {n: it.get_state().decode() for n, it in its.items()}
        self._offer((sharding.put_batch(host, self.mesh), states))
    except Exception as e:  # noqa: BLE001 - re-raised in the loop's thread by next()
      self._offer((e, None))

  def _offer(self, item) -> None:
    while not self._stop.is_set():
      try:
        return self._queue.put(item, timeout=0.1)
      except queue.Full:
        continue

  def next(self):
    if self._thread is None:
      self._start()
    batch, states = self._queue.get()
    if states is None:
      raise batch
    self.consumed = states
    return batch

  def state(self) -> dict:
    return {n: s for n, s in self.consumed.items() if s is not None}

  def close(self) -> None:
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
