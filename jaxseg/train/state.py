"""The training state: a pytree of arrays, nothing static."""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def create(
  model: nn.Module, tx: optax.GradientTransformation, key: jax.Array, image_shape: tuple[int, ...]
) -> TrainState:
  """Initial state for images of ``image_shape`` (``[H, W, C]``); jit-compatible."""
  variables = model.init({"params": key, "dropout": key}, jnp.zeros((1, *image_shape)))
  params = variables["params"]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(params),
  )


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
