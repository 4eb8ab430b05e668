"""Randomized weight perturbation (RWP, FedWeP; SPEC §1) as pure functions.

``rwp(params, seed, p=..., sigma=...)`` returns ``W ⊙ Z`` for every selected leaf,
``Z_i = 1 + sigma * N(0, 1)`` with probability ``p``, else 1. ``Z`` of a leaf is a
pure function of the seed and the leaf's *path* (e.g. ``down0_conv0/conv/kernel``):
the leaf's key is ``fold_in(key(seed), crc32(path))``, so it does not depend on the
order in which a tree is traversed, on how many devices the arrays live on, or on
the process: a server and a client that share a seed build the same perturbed
model. ``Z`` does not depend on ``W``, so gradients reach ``W`` with
``dW~/dW = Z`` (plain autodiff of the product).
"""

import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp


def path_name(path) -> str:
  """``a/b/kernel`` for a ``jax.tree_util`` key path."""
  parts = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
  return "/".join(parts)


def kernels(path: str, leaf) -> bool:
  """The default selection: conv and dense kernels (``kernel`` leaves, ndim >= 2)."""
  return path.rsplit("/", 1)[-1] == "kernel" and jnp.ndim(leaf) >= 2


def leaf_key(key: jax.Array, path: str) -> jax.Array:
  return jax.random.fold_in(key, zlib.crc32(path.encode()))


def noise(key: jax.Array, path: str, shape, p: float, sigma: float, dtype=jnp.float32):
  """The multiplier ``Z`` of the leaf at ``path``."""
  k_select, k_value = jax.random.split(leaf_key(key, path))
  chosen = jax.random.bernoulli(k_select, p, shape)
  return jnp.where(chosen, 1.0 + sigma * jax.random.normal(k_value, shape, dtype), 1.0).astype(
    dtype
  )


def rwp(
  params, seed_or_key, *, p: float, sigma: float, where: Callable[[str, jax.Array], bool] = kernels
):
  """``params`` with every leaf selected by ``where(path, leaf)`` multiplied by ``Z``."""
  is_key = isinstance(seed_or_key, jax.Array) and jax.dtypes.issubdtype(
    seed_or_key.dtype, jax.dtypes.prng_key
  )
  key = seed_or_key if is_key else jax.random.key(seed_or_key)

  def perturb(path, leaf):
    name = path_name(path)
    if not where(name, leaf):
      return leaf
    return leaf * noise(key, name, leaf.shape, p, sigma, leaf.dtype)

  return jax.tree_util.tree_map_with_path(perturb, params)
