"""Orbax checkpoints: ``DIR/<step>/`` folders keeping the latest and the best.

A checkpoint holds the training state (arrays) and a JSON record with the data
iterator's state, the loop's bookkeeping (best validation Dice, early-stopping
counter) and the state layout's ``format`` (:data:`jaxseg.train.state.FORMAT`), so a
resumed run continues exactly where the saved one was and a checkpoint of another
layout is refused with a clear message. Orbax writes into a temporary folder and
renames it when complete, so a crash or kill mid-save never leaves a corrupt
checkpoint behind; a checkpoint damaged later (truncated files) is set aside when a
run resumes or is restored (:meth:`Checkpoints.restore_usable`). Saves are
asynchronous: ``save`` returns once the arrays are on the host and the training
continues while they are written (the next save, a read and ``close`` wait for the
write to finish).
"""

import contextlib
import os
import shutil

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxseg.errors import UserError
from jaxseg.train.state import FORMAT

BEST_METRIC = "dice"
HEADROOM = 16 * 2**20  # bytes beyond the arrays a checkpoint may take (metadata, record)


class Checkpoints:
  """A ``CheckpointManager`` that preserves the latest and the best (by the metric
  ``best``, validation Dice by default; ``best=None`` keeps the latest only) steps."""

  def __init__(self, directory: str, *, read_only: bool = False, best: str | None = BEST_METRIC):
    policies = [checkpoint_managers.LatestN(n=1)]
    best_fn = None
    if best is not None:
      best_fn = lambda m: m[best]  # noqa: E731
      # A checkpoint without metrics (saved at preemption) is kept only while latest.
      best_n = checkpoint_managers.BestN(
        get_metric_fn=best_fn, n=1, keep_checkpoints_without_metrics=False
      )
      policies.append(best_n)
    policy = checkpoint_managers.AnyPreservationPolicy(policies)
    options = ocp.CheckpointManagerOptions(
      best_fn=best_fn,
      best_mode="max",
      preservation_policy=None if read_only else policy,
      read_only=read_only,
      enable_async_checkpointing=not read_only,
      cleanup_tmp_directories=not read_only,  # a save a kill interrupted
    )
    self.directory = os.path.abspath(directory)  # orbax takes absolute paths only
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    self.manager.wait_until_finished()
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    self.manager.wait_until_finished()
    return self.manager.best_step()

  def wait(self) -> None:
    """Until the last save is written."""
    self.manager.wait_until_finished()

  def save(self, step: int, state, record: dict, metrics: dict | None) -> None:
    """``metrics`` None: a checkpoint of a step without validation (preemption). A disk
    without room for it stops the run before anything is written (the previous
    checkpoints stay as they are), as does a write that fails."""
    path = os.path.join(self.directory, str(step))
    need = sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes"))
    free = shutil.disk_usage(_existing(self.directory)).free
    if free < need + HEADROOM:
      raise UserError(
        f"cannot write checkpoint {path}: No space left on device (it needs about "
        f"{(need + HEADROOM) / 2**20:,.0f} MiB, {free / 2**20:,.0f} MiB free); the earlier "
        "checkpoints are intact: free space and run the same command to resume."
      )
    try:
      self.manager.save(
        step,
        metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          record=ocp.args.JsonSave({**record, "format": FORMAT}),
        ),
      )  # returns once the arrays are copied to the host; written in the background
    except OSError as e:
      raise UserError(f"cannot write checkpoint {path}: {e.strerror or e}.") from e

  def restore(self, step: int, abstract_state):
    """``(state, record)`` of ``step``; ``abstract_state`` gives the tree structure."""
    self.manager.wait_until_finished()
    record = self.manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
    found = record["record"].get("format", 1)
    if found != FORMAT:
      path = os.path.join(self.directory, str(step))
      raise UserError(
        f"checkpoint {path} has checkpoint format {found}; this jaxseg reads format {FORMAT} "
        "(one state of named networks, since the run-layer redesign): train it again in a new "
        "workdir."
      )
    target = jax.tree.map(_target, abstract_state)
    restored = self.manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), record=ocp.args.JsonRestore()
      ),
    )
    record = dict(restored["record"])
    record.pop("format")
    return restored["state"], record

  def restore_usable(self, abstract_state, prefer_best: bool = False):
    """``(step, state, record)`` of the newest checkpoint that restores (with
    ``prefer_best``: the best first), or ``(None, None, None)`` when there is none.

    A checkpoint that does not restore (truncated or missing files, bad metadata) is
    reported by path and reason and moved aside as ``<step>.damaged`` (never
    deleted); the next one is tried. Raises when checkpoints exist but none restores.
    """
    self.manager.wait_until_finished()
    steps = sorted(self.manager.all_steps(), reverse=True)
    if prefer_best and self.manager.best_step() is not None:
      steps.remove(best := self.manager.best_step())
      steps.insert(0, best)
    damaged = []
    for step in steps:
      try:
        return (step, *self.restore(step, abstract_state))
      except UserError:
        raise
      except Exception as e:  # noqa: BLE001 - any failure to read it: set it aside
        damaged.append(self._set_aside(step, e))
    if damaged:
      raise UserError(
        f"no checkpoint in {self.directory} restores (set aside: {', '.join(damaged)}); "
        "train again in a new workdir."
      )
    return None, None, None

  def _set_aside(self, step: int, error: Exception) -> str:
    path = os.path.join(self.directory, str(step))
    aside = f"{path}.damaged"
    while os.path.exists(aside):
      aside += "+"
    reason = " ".join(str(error).split())[:300]
    print(
      f"Checkpoint {path} does not restore ({type(error).__name__}: {reason}); moved to {aside}.",
      flush=True,
    )
    os.rename(path, aside)
    self.manager.reload()
    return aside

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _existing(path: str) -> str:
  """``path`` or its nearest existing parent (what ``disk_usage`` can measure)."""
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  return path


def _target(leaf) -> jax.ShapeDtypeStruct:
  """A restore target: ``leaf``'s sharding, or (none given) this process's first device,
  so that a checkpoint written by several processes restores in one."""
  sharding = getattr(leaf, "sharding", None) or jax.sharding.SingleDeviceSharding(
    jax.local_devices()[0]
  )
  return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)


@contextlib.contextmanager
def finished(workdir: str, hint: str, best: str | None = BEST_METRIC):
  """The checkpoints of a run to read (``eval``, ``predict``, ``synthesize``), read-only
  and closed afterwards; a run without any is one line ending in ``hint``."""
  ckpts = Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True, best=best)
  try:
    if ckpts.latest_step() is None:
      raise UserError(f"no checkpoint in {workdir}/checkpoints; {hint}.")
    yield ckpts
  finally:
    ckpts.close()
