"""The run skeleton every runner shares: the workdir (its lock, ``config.json``, the
files a run writes), the run kinds and the config sections each reads, resume or
init, the line a run ends with, and the multi-host rules (every process computes,
process 0 alone writes files and prints). The loop itself: :mod:`jaxseg.run.loop`."""

import contextlib
import fcntl
import json
import os
import shutil
import socket
from collections.abc import Callable

import jax
import ml_collections

from jaxseg import data as datasets
from jaxseg.errors import UserError
from jaxseg.run.checkpoint import Checkpoints
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
