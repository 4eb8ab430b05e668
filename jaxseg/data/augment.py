"""Data augmentation as pure JAX functions of a PRNG key, run inside the jitted step.

An augmentation is ``fn(key, example, **kwargs) -> example`` on one example, a dict
of spatial arrays (``image [H, W, C]``, ``labels [H, W]``, optional ``weights``);
geometric transforms move every array alike. :func:`apply` runs the configured
chain over a batch with one key per example, so results are reproducible and the
chain vmaps over federated clients.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from jaxseg import tables

AUGMENTATIONS = {
  "flip": "jaxseg.data.augment:flip",
  "rot90": "jaxseg.data.augment:rot90",
}


def flip(key, example, p: float = 0.5):
  """Independent horizontal and vertical flips, each with probability ``p``."""
  kh, kv = jax.random.split(key)
  do_h, do_v = jax.random.bernoulli(kh, p), jax.random.bernoulli(kv, p)

  def one(x):
    x = jnp.where(do_h, jnp.flip(x, axis=1), x)
    return jnp.where(do_v, jnp.flip(x, axis=0), x)

  return {k: one(v) for k, v in example.items()}


def rot90(key, example):
  """Rotation by a random multiple of 90° (square images; 0° or 180° otherwise)."""
  h, w = example["labels"].shape[:2]
  if h == w:
    turns = jax.random.randint(key, (), 0, 4)
    return {
      k: jax.lax.switch(turns, [lambda x, t=t: jnp.rot90(x, t) for t in range(4)], v)
      for k, v in example.items()
    }
  half = jax.random.bernoulli(key)
  return {k: jnp.where(half, jnp.rot90(v, 2), v) for k, v in example.items()}


def check(chain: Mapping) -> None:
  for name in chain:
    tables.check(AUGMENTATIONS, name, "augmentation")


def apply(chain: Mapping[str, Mapping], key: jax.Array, batch: dict) -> dict:
  """Applies ``{name: kwargs}`` in order to every example of ``batch``."""
  fns = [
    (tables.resolve(AUGMENTATIONS, name, "augmentation"), dict(kwargs))
    for name, kwargs in chain.items()
  ]
  spatial = {k: v for k, v in batch.items() if k in ("image", "labels", "weights")}

  def one(key, example):
    for i, (fn, kwargs) in enumerate(fns):
      example = fn(jax.random.fold_in(key, i), example, **kwargs)
    return example

  keys = jax.random.split(key, batch["labels"].shape[0])
  return {**batch, **jax.vmap(one)(keys, spatial)}
