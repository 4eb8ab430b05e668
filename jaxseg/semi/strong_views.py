"""PseudoSeg's strong view of an unlabeled batch (googleinterns/wss
``core/input_preprocess.py:128-175``): colour jitter then CutOut per image, CutOut's
pixels marked out of the consistency loss; or jaxseg's earlier ``gray_noise`` view."""

import jax
import jax.numpy as jnp

from jaxseg.data import augment

STRONG = ("official", "gray_noise")
# core/preprocess_utils.py:random_color_jitter (applied with probability 1.0,
# core/input_preprocess.py:_PROB_OF_JITTER): its strengths, on images in [0, 1].
JITTER = dict(brightness=0.5, contrast=0.5, saturation=0.5)
CUTOUT = 100 / 513  # cutout_with_mask(pad_size=50): a 100-pixel square at crop 513


def colour_jitter(key, image):
  """One image ``[..., C]`` in [0, 1] jittered as ``color_jitter`` does: brightness
  (``+ U(-0.5, 0.5)``), contrast (``(x - mean) f + mean``, ``f ~ U(0.5, 1.5)``) and, for
  RGB images, saturation (blend with the gray image by ``U(0.5, 1.5)``) in a random
  order, clipped to [0, 1] after each. The official hue jitter (0.25) is not applied
  (a named deviation: it changes nothing on gray images, most medical ones)."""
  k_order, *keys = jax.random.split(key, 4)

  def brightness(x, k):
    return x + jax.random.uniform(k, (), minval=-JITTER["brightness"], maxval=JITTER["brightness"])

  def contrast(x, k):
    f = jax.random.uniform(k, (), minval=1 - JITTER["contrast"], maxval=1 + JITTER["contrast"])
    mean = x.mean(tuple(range(x.ndim - 1)), keepdims=True)
    return (x - mean) * f + mean

  def saturation(x, k):
    f = jax.random.uniform(k, (), minval=1 - JITTER["saturation"], maxval=1 + JITTER["saturation"])
    gray = (x * jnp.array([0.2989, 0.587, 0.114])).sum(-1, keepdims=True)
    return gray + (x - gray) * f

  ops = [brightness, contrast] + ([saturation] if image.shape[-1] == 3 else [])
  order = jax.random.permutation(k_order, len(ops))
  for i in range(len(ops)):
    image = jnp.clip(jax.lax.switch(order[i], ops, image, keys[i]), 0.0, 1.0)
  return image


def cutout(key, image, fraction: float):
  """``(image, valid)``: a square (cube) of side ``fraction`` of the shortest side,
  centred anywhere (clipped at the border), filled with the image's mean and marked
  invalid, as ``cutout_with_mask`` does (its pixels leave the consistency loss)."""
  spatial = image.shape[:-1]
  half = max(1, round(fraction * min(spatial) / 2))
  centres = jax.random.randint(key, (len(spatial),), 0, jnp.array(spatial))
  inside = jnp.ones(spatial, bool)
  for axis, size in enumerate(spatial):
    index = jnp.arange(size).reshape([-1 if a == axis else 1 for a in range(len(spatial))])
    inside = inside & (index >= centres[axis] - half) & (index < centres[axis] + half)
  filled = jnp.where(inside[..., None], image.mean(), image)
  return filled, (~inside).astype(jnp.float32)


def strong_view(key, weak, kind: str, noise: float, fraction: float):
  """``(strong images, valid [B, ...])`` of the weak batch ``[B, ..., C]``: ``official``
  (per image: colour jitter, then CutOut; ``core/input_preprocess.py:128-175``) or
  ``gray_noise`` (jaxseg's earlier view: one gray-value jitter of the batch and
  Gaussian noise of std ``noise``; nothing masked)."""
  if kind == "official":
    keys = jax.random.split(key, weak.shape[0])
    jittered = jax.vmap(colour_jitter)(jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys), weak)
    cut_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    return jax.vmap(lambda k, x: cutout(k, x, fraction))(cut_keys, jittered)
  k_gray, k_noise = jax.random.split(key)
  strong = augment.gray_value(k_gray, {"image": weak}, brightness=0.2, contrast=0.4, gamma=0.4)
  strong = strong["image"] + noise * jax.random.normal(k_noise, weak.shape)
  return strong, jnp.ones(weak.shape[:-1], jnp.float32)
