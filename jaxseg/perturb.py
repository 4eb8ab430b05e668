"""Randomized weight perturbation (RWP, FedWeP; SPEC §1) as pure functions.

``rwp(params, seed, p=..., sigma=...)`` returns ``W ⊙ Z`` for every selected leaf,
``Z_i = 1 + sigma * N(0, 1)`` with probability ``p``, else 1. ``Z`` of a leaf is a
pure function of the seed and the leaf's *path* (e.g. ``down0_conv0/conv/kernel``)
(see :func:`noise_of`), so it does not depend on the order in which a tree is
traversed, on its other leaves, on how many devices the arrays live on, or on the
process: a server and a client that share a seed build the same perturbed
model. ``Z`` does not depend on ``W``, so gradients reach ``W`` with
``dW~/dW = Z`` (plain autodiff of the product).
"""

import math
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


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


def kernels_and_biases(path: str, leaf) -> bool:
  """Kernels and the biases of convolutions and dense layers (not norm offsets)."""
  last = path.rsplit("/", 1)[-1]
  return kernels(path, leaf) or (last == "bias" and not _in_norm(path))


def every_leaf(path: str, leaf) -> bool:
  """Every parameter: kernels, biases, and BatchNorm / LayerNorm scales and offsets."""
  del path, leaf
  return True


def _in_norm(path: str) -> bool:
  """Whether ``path`` is a normalisation layer's parameter (flax names them ``...Norm``,
  ``norm``, ``bn``)."""
  module = path.rsplit("/", 2)[-2].lower() if "/" in path else ""
  return "norm" in module or module.startswith("bn")


# Which leaves RWP perturbs, by name (``method.kwargs.leaves``; the paper: "every weight
# tensor", read as kernels).
LEAVES = {"kernels": kernels, "kernels_and_biases": kernels_and_biases, "all": every_leaf}


CHUNK = 4096  # elements drawn per key: a leaf of n elements uses ceil(n / CHUNK) keys


def noise_of(key: jax.Array, leaves: dict, p: float, sigma: float) -> dict:
  """The multipliers ``Z`` of ``{path: shape}``, drawn for all leaves at once.

  Element ``e`` of the leaf at ``path`` takes uniform and normal draws number
  ``e % CHUNK`` of the key ``fold_in(fold_in(key, crc32(path)), e // CHUNK)``: a pure
  function of the seed, the path and the element index (not of the other leaves).
  The draws of all leaves form one vmapped call, so the random number generator is
  compiled once per tree rather than once per leaf.
  """
  paths = sorted(leaves)
  sizes = [math.prod(leaves[path]) for path in paths]
  chunks = [max(1, -(-n // CHUNK)) for n in sizes]
  crcs = np.array([zlib.crc32(path.encode()) for path in paths], np.uint32)
  owner = np.repeat(np.arange(len(paths)), chunks)
  index = np.concatenate([np.arange(c) for c in chunks]).astype(np.uint32)
  leaf_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, crcs)
  chunk_keys = jax.vmap(jax.random.fold_in)(leaf_keys[owner], index)

  def draw(k):
    k_select, k_value = jax.random.split(k)
    chosen = jax.random.uniform(k_select, (CHUNK,)) < p
    return jnp.where(chosen, 1.0 + sigma * jax.random.normal(k_value, (CHUNK,)), 1.0)

  flat = jax.vmap(draw)(chunk_keys).reshape(-1)
  starts = np.concatenate([[0], np.cumsum(chunks)[:-1]]) * CHUNK
  return {
    path: flat[start : start + n].reshape(leaves[path])
    for path, start, n in zip(paths, starts, sizes, strict=True)
  }


def rwp(
  params, seed_or_key, *, p: float, sigma: float, where: Callable[[str, jax.Array], bool] = kernels
):
  """``params`` with every leaf selected by ``where(path, leaf)`` multiplied by ``Z``."""
  is_key = isinstance(seed_or_key, jax.Array) and jax.dtypes.issubdtype(
    seed_or_key.dtype, jax.dtypes.prng_key
  )
  key = seed_or_key if is_key else jax.random.key(seed_or_key)
  named = jax.tree_util.tree_flatten_with_path(params)[0]
  selected = {path_name(path): leaf.shape for path, leaf in named if where(path_name(path), leaf)}
  z = noise_of(key, selected, p, sigma)

  def perturb(path, leaf):
    name = path_name(path)
    return leaf * z[name].astype(leaf.dtype) if name in z else leaf

  return jax.tree_util.tree_map_with_path(perturb, params)
