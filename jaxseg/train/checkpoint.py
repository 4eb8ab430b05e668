"""Orbax checkpoints: ``DIR/<step>/`` folders keeping the latest and the best.

A checkpoint holds the training state (arrays) and a JSON record with the data
iterator's state and the loop's bookkeeping (best validation Dice, early-stopping
counter), so a resumed run continues exactly where the saved one was. Orbax writes
into a temporary folder and renames it when complete, so a crash or kill mid-save
never leaves a corrupt checkpoint behind.
"""

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

BEST_METRIC = "dice"


class Checkpoints:
  """A ``CheckpointManager`` that preserves the latest and the best (by the metric
  ``best``, validation Dice by default; ``best=None`` keeps the latest only) steps."""

  def __init__(self, directory: str, *, read_only: bool = False, best: str | None = BEST_METRIC):
    policies = [checkpoint_managers.LatestN(n=1)]
    best_fn = None
    if best is not None:
      best_fn = lambda m: m[best]  # noqa: E731
      policies.append(checkpoint_managers.BestN(get_metric_fn=best_fn, n=1))
    policy = checkpoint_managers.AnyPreservationPolicy(policies)
    options = ocp.CheckpointManagerOptions(
      best_fn=best_fn,
      best_mode="max",
      preservation_policy=None if read_only else policy,
      read_only=read_only,
      enable_async_checkpointing=False,
    )
    self.manager = ocp.CheckpointManager(directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def save(self, step: int, state, record: dict, metrics: dict) -> None:
    self.manager.save(
      step,
      metrics={k: float(v) for k, v in metrics.items()},
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)),
    )
    self.manager.wait_until_finished()

  def restore(self, step: int, abstract_state):
    """``(state, record)`` of ``step``; ``abstract_state`` gives the tree structure."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = self.manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), record=ocp.args.JsonRestore()
      ),
    )
    return restored["state"], restored["record"]

  def close(self) -> None:
    self.manager.close()
