"""Compressed client updates (``config.fed.compress``): 8-bit stochastic quantisation
and top-k sparsification — what a client's update becomes (:func:`compressed`), the
bytes that travel (its ``wire``: a real site sends these, :mod:`jaxseg.flower.app`),
how the server reads them back (:func:`decompressed`) and their size
(:func:`update_bytes`). ``recipe``: a :class:`jaxseg.fed.recipe.Recipe` (its
``compress`` and ``fraction``)."""

import math

import jax
import jax.numpy as jnp


def quantized(x, key) -> jax.Array:
  """``x`` in 8 bits: 256 levels between its min and max, stochastic rounding (unbiased:
  E[q] = x); what the server reconstructs from the bytes and the two float32 ends."""
  return dequantized(*quantize(x, key))


def quantize(x, key) -> tuple:
  """``(level uint8, lo, step)`` of :func:`quantized`: the bytes that travel.

  ``step`` is rounded up to 16 significant bits (a relative change below 2^-15), so
  that ``level * step`` (8 bits times 16) is exact in float32: XLA fuses ``lo + level *
  step`` into a multiply-add in some programs and not in others, and with an exact
  product both round alike — the server's reconstruction equals the site's."""
  lo, hi = x.min(), x.max()
  step = jnp.maximum(hi - lo, 1e-30) / 255.0
  bits = jax.lax.bitcast_convert_type(step, jnp.uint32)
  step = jax.lax.bitcast_convert_type((bits + 0xFF) & ~jnp.uint32(0xFF), jnp.float32)
  level = jnp.floor((x - lo) / step + jax.random.uniform(key, x.shape))
  return jnp.clip(level, 0, 255).astype(jnp.uint8), lo, step


def dequantized(level, lo, step) -> jax.Array:
  return lo + level.astype(jnp.float32) * step


def top_k(x, fraction: float) -> jax.Array:
  """``x`` with all but its ``ceil(fraction * size)`` largest magnitudes zeroed."""
  return densified(*top_k_entries(x, fraction), x.shape)


def top_k_entries(x, fraction: float) -> tuple:
  """``(values, int32 positions)`` of :func:`top_k`'s ``ceil(fraction * size)`` kept
  entries (of ``x`` flattened): what travels."""
  k = max(1, math.ceil(fraction * x.size))
  flat = x.ravel()
  _, idx = jax.lax.top_k(jnp.abs(flat), k)
  return flat[idx], idx.astype(jnp.int32)


def densified(values, idx, shape) -> jax.Array:
  return jnp.zeros(math.prod(shape), values.dtype).at[idx].set(values).reshape(shape)


def compressed(recipe, delta, key) -> tuple[dict, dict | None]:
  """``(the update as the server reconstructs it, what travels)``: for ``q8`` the
  fields ``level``, ``lo``, ``step``, for ``topk`` ``values`` and ``index``, each a
  tree shaped like ``delta`` (:func:`decompressed` reads it back); ``None`` without
  compression."""
  if recipe.compress == "none":
    return delta, None
  leaves, treedef = jax.tree.flatten(delta)
  if recipe.compress == "q8":
    keys = jax.random.split(key, len(leaves))
    codes = [quantize(x, k) for x, k in zip(leaves, keys, strict=True)]
    names = ("level", "lo", "step")
  else:
    codes = [top_k_entries(x, recipe.fraction) for x in leaves]
    names = ("values", "index")
  wire = {n: jax.tree.unflatten(treedef, [c[i] for c in codes]) for i, n in enumerate(names)}
  return decompressed(recipe, wire, delta), wire


def decompressed(recipe, wire: dict, like) -> dict:
  """The update ``wire`` (:func:`compressed`) stands for, shaped like ``like``."""
  if recipe.compress == "q8":
    return jax.tree.map(dequantized, wire["level"], wire["lo"], wire["step"])
  dense = lambda v, i, x: densified(v, i, x.shape)  # noqa: E731
  return jax.tree.map(dense, wire["values"], wire["index"], like)


def update_bytes(recipe, params) -> int:
  """Bytes of the update of ``params`` as ``recipe`` sends it: float32 values, or a
  byte a value and two float32 ends a tensor (``q8``), or ``topk``'s kept values and
  int32 positions."""
  sizes = [math.prod(x.shape) for x in jax.tree.leaves(params)]
  if recipe.compress == "q8":
    return sum(n + 8 for n in sizes)
  if recipe.compress == "topk":
    return sum(8 * max(1, math.ceil(recipe.fraction * n)) for n in sizes)
  return sum(4 * n for n in sizes)
