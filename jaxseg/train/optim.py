"""Optimizer and learning-rate schedule from ``config.optim``."""

import optax

from jaxseg import tables
from jaxseg.errors import UserError

OPTIMIZERS = {
  "adam": "optax:adam",
  "adamw": "optax:adamw",
  "sgd": "optax:sgd",  # kwargs momentum: FedAvgM as a server optimizer
  "adagrad": "optax:adagrad",
  "yogi": "optax:yogi",
}
SCHEDULES = ("constant", "cosine")


def check(optim_config) -> None:
  tables.check(OPTIMIZERS, optim_config.name, "optimizer")
  if optim_config.schedule not in SCHEDULES:
    raise UserError(
      f"config.optim.schedule: unknown schedule {optim_config.schedule!r}; "
      f"known: {', '.join(SCHEDULES)}."
    )


def make(optim_config, total_steps: int) -> optax.GradientTransformation:
  """``optim.name`` (an optax optimizer, ``optim.kwargs`` passed on) at ``optim.lr``.

  ``optim.schedule``: ``constant``, or ``cosine`` decay to 0 over ``total_steps``;
  ``optim.warmup_steps`` of linear warm-up precede either. ``optim.grad_clip`` > 0
  clips the global gradient norm.
  """
  check(optim_config)
  lr, warmup = optim_config.lr, optim_config.warmup_steps
  if optim_config.schedule == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1))
  else:
    schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    )
  optimizer = tables.resolve(OPTIMIZERS, optim_config.name, "optimizer")
  tx = optimizer(schedule, **optim_config.kwargs)
  if optim_config.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim_config.grad_clip), tx)
  return tx
