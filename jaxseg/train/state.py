"""The one training state of every method: a step and named networks, all arrays.

A :class:`Net` is one network's parameters, BatchNorm statistics and optimizer state
(``None`` for a network that is not trained by gradients, e.g. Mean Teacher's
teacher). :class:`State` holds the step and the method's networks by name —
``{"model"}`` for supervised training, ``{"student", "teacher"}``, ``{"a", "b"}``,
``{"generator", "discriminator"}``. No PRNG key is stored: steps fold the step
number into the run's key.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

# Checkpoints record this number; a workdir written with another layout is refused.
FORMAT = 2


class Net(struct.PyTreeNode):
  params: Any
  batch_stats: Any
  opt_state: Any


class State(struct.PyTreeNode):
  step: jax.Array
  nets: dict  # name -> Net


def start(nets: dict, step: int = 0) -> State:
  return State(step=jnp.asarray(step, jnp.int32), nets=nets)


def make_net(variables: dict, tx: optax.GradientTransformation | None) -> Net:
  """A :class:`Net` from ``model.init``'s variables (``tx`` None: not trained)."""
  params = variables["params"]
  return Net(
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=None if tx is None else tx.init(params),
  )


def variables(net: Net) -> dict:
  """``{params, batch_stats}``: what ``model.apply`` takes."""
  return {"params": net.params, "batch_stats": net.batch_stats}


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
