"""The run skeleton every runner shares: the workdir, its ``config.json``, resume or
init, the logger and progress bar, and the multi-host rules (every process computes,
process 0 alone writes files and prints)."""

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from tensorboardX import SummaryWriter

from jaxseg import data as datasets
from jaxseg.errors import Preempted, UserError
from jaxseg.run import pictures
from jaxseg.run.checkpoint import Checkpoints
from jaxseg.train import sharding
from jaxseg.train.state import count_params


def primary() -> bool:
  """Whether this process writes files and prints (process 0 of a multi-host run)."""
  return jax.process_index() == 0


def prepare_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    # One probe per process: processes of a multi-host run share the workdir.
    probe = os.path.join(workdir, f".write_test.{socket.gethostname()}.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"workdir {workdir!r} is not writable: {e.strerror or e}.") from e


_LOCKS = {}  # lock path -> its open file, held until the process ends


def lock_workdir(workdir: str) -> None:
  """One run per workdir: an exclusive ``flock`` on ``workdir/.lock`` (process 0),
  held until this process ends — the OS releases it then, after a crash or ``kill
  -9`` too, so a dead run's lock never blocks the next. A workdir held by another
  process is refused naming its host and pid; ``eval`` and ``predict`` take no lock.
  (``flock`` on a network file system shared by several hosts may not exclude.)"""
  path = os.path.realpath(os.path.join(workdir, ".lock"))
  if not primary() or path in _LOCKS:
    return
  f = open(path, "a+")  # noqa: SIM115 (held open: the lock lives as long as the file)
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or "another process"
    f.close()
    raise UserError(
      f"workdir {workdir!r} is in use by {holder}; wait for that run to end or use another workdir."
    ) from None
  f.seek(0)
  f.truncate()
  f.write(f"jaxseg on host {socket.gethostname()} (pid {os.getpid()})")
  f.flush()
  _LOCKS[path] = f


def check_positive(train_config, keys) -> None:
  for key in keys:
    if train_config[key] <= 0:
      raise UserError(f"config.train.{key} must be positive, found {train_config[key]}.")


# What a run is, as its config declares it (``config.kind``), and the top-level
# sections each kind reads. A section no run of its kind reads is refused, naming it.
COMMON = ("seed", "kind", "data", "augment", "optim", "train", "sweep", "runtime")
SEGMENTATION = ("model", "loss", "eval", "method")
SECTIONS = {
  "segmentation": (*COMMON, *SEGMENTATION, "mesh"),
  "federated": (*COMMON, *SEGMENTATION, "fed"),  # devices: config.fed.shard_clients
  "gan": (*COMMON, "gan"),
}
REQUIRED = {"segmentation": (), "federated": ("fed", "method"), "gan": ("gan",)}
DATA_SECTIONS = {"images": ("infer",), "volumes": ("volume",)}  # of segmentation kinds


def kind(config) -> str:
  """``config.kind`` (``segmentation``, ``federated`` or ``gan``)."""
  if "kind" not in config:
    raise UserError(
      f"config.kind is missing: a config declares its run kind ({', '.join(SECTIONS)}); "
      "a workdir written before jaxseg had kinds must be trained again."
    )
  if config.kind not in SECTIONS:
    raise UserError(f"config.kind: unknown {config.kind!r}; known: {', '.join(SECTIONS)}.")
  return config.kind


def check_sections(config) -> None:
  """Refuses a top-level section that a run of ``config.kind`` (on its kind of data)
  does not read, naming it."""
  run_kind = kind(config)
  for section in REQUIRED[run_kind]:
    if section not in config:
      raise UserError(f"config.{section}: a {run_kind} run needs this section; it is missing.")
  allowed = set(SECTIONS[run_kind])
  if run_kind != "gan":
    data = "volumes" if config.data.name in datasets.VOLUMES else "images"
    allowed |= set(DATA_SECTIONS[data])
  for section in config:
    if section not in allowed:
      where = run_kind if run_kind == "gan" else f"{run_kind} run of {data}"
      raise UserError(
        f"config.{section}: a {where} does not use this section (it reads "
        f"{', '.join(sorted(allowed))})."
      )


def start_run(config, workdir: str, check: Callable, experiment: Callable):
  """Prepares ``workdir``, checks ``config``'s sections and ``config`` with ``check``,
  builds ``experiment(config)`` and (process 0) writes its config, every ``auto``
  setting resolved, and notes."""
  prepare_workdir(workdir)
  lock_workdir(workdir)
  check_sections(config)
  check(config)
  exp = experiment(config)
  write_json(workdir, "config.json", exp.config)
  for note in exp.notes:
    say(note)
  return exp


def write_json(workdir: str, name: str, value) -> None:
  """``value`` (a ConfigDict or JSON-able) as ``workdir/name``, from process 0 only."""
  if not primary():
    return
  with open(os.path.join(workdir, name), "w") as f:
    if isinstance(value, ml_collections.ConfigDict):
      f.write(value.to_json_best_effort(indent=2))
    else:
      json.dump(value, f, indent=2)


def write_text(workdir: str, name: str, text: str) -> None:
  if primary():
    with open(os.path.join(workdir, name), "w") as f:
      f.write(text)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise UserError(f"{path} not found: {workdir!r} is not a jaxseg run directory.")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def resume_or_init(ckpts: Checkpoints, abstract_state, init_state: Callable, describe: Callable):
  """``(state, record)``: the latest checkpoint's, or a fresh state (``describe(state)``
  prints what was built) and an empty record."""
  step, state, record = ckpts.restore_usable(abstract_state)
  if step is not None:
    say(f"Resumed from {ckpts.directory}/{step}.")
    return state, record
  state = init_state()
  describe(state)
  return state, {}


def describe_nets(name: str) -> Callable:
  """``describe`` for :func:`resume_or_init`: the parameter count of each network."""

  def describe(state) -> None:
    sizes = [(n, count_params(net.params)) for n, net in state.nets.items()]
    counts = ", ".join(f"{n} {c:,}" for n, c in sizes) if len(sizes) > 1 else f"{sizes[0][1]:,}"
    say(f"{name}: {counts} parameters.")

  return describe


def say(text: str) -> None:
  if primary():
    print(text, flush=True)


def progress(total: int, initial: int, desc: str, unit: str) -> tqdm.tqdm:
  return tqdm.tqdm(
    total=total, initial=initial, desc=desc, unit=unit, mininterval=1.0, disable=not primary()
  )


@contextlib.contextmanager
def outputs(workdir: str, ckpts: Checkpoints, total: int, done: int, desc: str, unit: str):
  """A run's logger, progress bar and :class:`Preemption` watch; closes them and
  ``ckpts`` however the run ends."""
  logger, bar = Logger(workdir), progress(total, done, desc, unit)
  try:
    with Preemption() as preemption:
      yield logger, bar, preemption
  finally:
    bar.close()
    logger.close()
    ckpts.close()


class Logger:
  """Appends to ``metrics.jsonl``, writes TensorBoard events and draws
  ``learning_curves.png`` (process 0 only). The curves are drawn when the run ends
  and, while it goes, after a validation at most every :attr:`CURVES_EVERY_S`
  seconds: a matplotlib figure costs the training loop ~0.3 s of host time (measured
  on the 2-core CPU machine), which drawing at every validation spent needlessly."""

  CURVES_EVERY_S = 60.0

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.curves = os.path.join(workdir, "learning_curves.png")
    self.enabled = primary()
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard")) if self.enabled else None
    self.drawn, self.stale = time.monotonic(), False

  def write(self, step: int, split: str, values: dict) -> None:
    if not self.enabled:
      return
    try:
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
    except OSError as e:
      raise UserError(f"cannot write {self.path}: {e.strerror or e}.") from e
    for name, value in values.items():
      self.tb.add_scalar(f"{split}/{name}", value, step)
    self.tb.flush()
    if split == "validation":
      self.stale = True
      if time.monotonic() - self.drawn >= self.CURVES_EVERY_S:
        self.draw()

  def draw(self) -> None:
    pictures.save_learning_curves(self.path, self.curves)
    self.drawn, self.stale = time.monotonic(), False

  def close(self) -> None:
    if self.enabled:
      self.tb.close()
      if self.stale:
        self.draw()


def remaining(done: int, total: int, stop_after: int | None) -> range:
  """The steps (or rounds) a run resumed after ``done`` still takes, up to ``total``;
  at most ``stop_after`` of them (tests stop a run there, as a kill would)."""
  end = total if stop_after is None else min(total, done + stop_after)
  return range(done + 1, end + 1)


class Preemption:
  """SIGTERM or SIGINT during a run's loop (``with Preemption() as preemption``): the
  loop finishes the step (round) in flight, then :meth:`stop` checkpoints it, waits
  for the write and raises :class:`~jaxseg.errors.Preempted`; a second signal acts as
  usual. With several processes (``jax.distributed``) JAX's preemption service takes
  the signal and every process stops at the same step
  (``multihost_utils.reached_preemption_sync_point``)."""

  def __enter__(self):
    self.received, self.previous = None, {}
    alone = jax.process_count() == 1
    if alone and threading.current_thread() is threading.main_thread():
      for s in (signal.SIGTERM, signal.SIGINT):
        self.previous[s] = signal.signal(s, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name
    self.__exit__()

  def __exit__(self, *exc):
    for s, handler in self.previous.items():
      signal.signal(s, handler)
    self.previous = {}

  def requested(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received is not None

  def stop(self, ckpts: Checkpoints, step: int, save: Callable | None) -> None:
    """Checkpoints ``step`` (``save()``; None: it was just saved) and raises."""
    if save is not None:
      save()
    ckpts.wait()
    path = os.path.join(ckpts.directory, str(step))
    raise Preempted(
      f"stopped by {self.received or 'preemption'} after step {step}: checkpoint {path} "
      "written; the same command resumes from it."
    )


class Profile:
  """``config.train.profile_steps = (first, last)``: a JAX profiler trace of those
  steps (inclusive) in ``workdir/profile`` (process 0), viewable in TensorBoard's
  profile plugin or Perfetto; ``()`` off."""

  def __init__(self, workdir: str, steps):
    self.directory = os.path.join(workdir, "profile")
    self.first, self.last = tuple(steps) if steps and primary() else (0, -1)
    self.tracing = False

  def before(self, step: int) -> None:
    if not self.tracing and self.first <= step <= self.last:
      jax.profiler.start_trace(self.directory)
      self.tracing = True

  def after(self, step: int, step_metrics) -> None:
    if self.tracing and step == self.last:
      jax.block_until_ready(step_metrics)
      jax.profiler.stop_trace()
      self.tracing = False
      say(f"Profiler trace of steps {self.first}..{self.last} in {self.directory}.")


class Meter:
  """The step metrics since the last log line and the training throughput over them
  (``restart`` after a validation or checkpoint: that time is not training)."""

  def __init__(self):
    self.pending, self.since = [], time.time()

  def add(self, step_metrics: dict) -> None:
    self.pending.append(step_metrics)

  def restart(self) -> None:
    self.since = time.time()

  def flush(self, step: int, ckpts: Checkpoints, batch_size: int) -> dict:
    """Means of the pending metrics (see :func:`mean_metrics`) and ``images_per_s``."""
    values = mean_metrics(self.pending, step, ckpts)
    now = time.time()
    values["images_per_s"] = len(self.pending) * batch_size / (now - self.since)
    self.pending, self.since = [], now
    return values


def mean_metrics(pending: list, step: int, ckpts: Checkpoints) -> dict:
  """Means of the pending step metrics; raises on the first non-finite loss."""
  pending = sharding.fetch(pending)
  losses_ = np.asarray([m["loss"] for m in pending])
  bad = np.flatnonzero(~np.isfinite(losses_))
  if bad.size:
    first = step - len(pending) + 1 + int(bad[0])
    latest = ckpts.latest_step()
    kept = "none was written yet" if latest is None else f"step {latest} is intact"
    raise UserError(
      f"Training diverged: loss is {losses_[bad[0]]} at step {first} (last good checkpoint: "
      f"{kept}); lower config.optim.lr or set config.optim.grad_clip."
    )
  return {k: float(np.mean([m[k] for m in pending])) for k in pending[0]}


def validations(workdir: str) -> list[dict]:
  """The ``validation`` lines of ``workdir``'s ``metrics.jsonl`` so far."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [r for r in map(json.loads, f) if r.get("split") == "validation"]


def summary(workdir: str, before: list[dict]) -> str:
  """The line a finished ``jaxseg train`` ends with: its best validation Dice and step,
  and the next command (or that the run was already complete)."""
  after = validations(workdir)
  done = "was already complete" if before and len(after) == len(before) else "finished"
  scored = [r for r in after if "dice" in r]
  best = max(scored, key=lambda r: r["dice"], default=None)
  found = f"best validation Dice {best['dice']:.4f} at step {best['step']}; " if best else ""
  return f"jaxseg: the run in {workdir} {done}: {found}next: jaxseg eval --workdir {workdir}"


@contextlib.contextmanager
def removed_on_error(workdir: str):
  """Removes ``workdir`` if it was new (absent or empty) and the run in it stops on a
  :class:`UserError` (a bad config or data) before any checkpoint was written, so a
  failed first try leaves nothing; a run that checkpointed keeps everything."""
  fresh = not os.path.exists(workdir) or not os.listdir(workdir)
  try:
    yield
  except UserError:
    saved = os.path.join(workdir, "checkpoints")
    if fresh and primary() and not (os.path.isdir(saved) and os.listdir(saved)):
      shutil.rmtree(workdir, ignore_errors=True)
    raise
