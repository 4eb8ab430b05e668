"""Patch-based training data for volumes, on the device: pure functions of a key.

The training cases live on the device as one padded stack (:func:`stack`); every step
draws its batch of patches there (:func:`sample`) — a case (given, or uniformly), then either a
random position inside the case or, for the last ``oversample`` share of the batch
(nnU-Net's one third), a position centred on a foreground voxel drawn uniformly — and
augments each patch (:func:`augment`): flips along each of ``flip_axes``, 90° rotations in the
axial plane (the first two, canonical x-y, axes, when the patch is square there), an
affine warp (rotation about the z axis, isotropic scale) combined with a coarse
elastic deformation, and gray-value gamma/brightness/contrast. Everything is keyed,
so the batches of step ``s`` are a function of the run's key and ``s`` alone
(determinism and exact resume).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Augment3d:
  """``config.volume.augment``: probabilities and ranges (0 turns one off)."""

  flip: float = 0.5  # per axis of flip_axes
  flip_axes: tuple = (0, 1, 2)  # e.g. (0,): left-right only, where labels name a side
  rotate90: float = 0.5  # in the axial (x-y) plane
  affine: float = 0.2  # rotation about z and scale, with the elastic field
  rotation: float = 0.52  # radians (±30°)
  scale: tuple = (0.85, 1.25)
  elastic: float = 2.0  # std (voxels) of the coarse displacement field
  gray: float = 0.3  # gamma/brightness/contrast
  brightness: float = 0.1
  contrast: float = 0.25
  gamma: float = 0.3


def stack(cases: list[dict], patch, full=None) -> dict:
  """Host arrays of ``cases``: images ``[N, X, Y, Z, C]`` and labels ``[N, X, Y, Z]``
  zero-padded to ``full`` (default: the largest case, at least ``patch``), and each
  case's shape."""
  shapes = np.array([c["labels"].shape for c in cases], np.int32)
  full = np.maximum(shapes.max(0), np.asarray(patch)) if full is None else full
  n, channels = len(cases), cases[0]["image"].shape[-1]
  images = np.zeros((n, *full, channels), np.float32)
  labels = np.zeros((n, *full), np.uint8)
  for i, c in enumerate(cases):
    region = tuple(slice(0, s) for s in c["labels"].shape)
    images[i][region] = c["image"]
    labels[i][region] = c["labels"]
  return {"images": images, "labels": labels, "shapes": shapes}


def _start(key, case_labels, shape, patch, foreground):
  """Corner of one patch: random inside the case, or centred on a foreground voxel."""
  full = jnp.asarray(case_labels.shape)
  k_pos, k_fg = jax.random.split(key)
  high = jnp.maximum(shape - patch, 0)
  random = (jax.random.uniform(k_pos, (3,)) * (high + 1)).astype(jnp.int32)
  fg = case_labels.reshape(-1) > 0
  index = jax.random.categorical(k_fg, jnp.where(fg, 0.0, -jnp.inf))
  centre = jnp.stack(jnp.unravel_index(index, case_labels.shape)).astype(jnp.int32)
  centred = jnp.clip(centre - patch // 2, 0, full - patch)
  return jnp.where(foreground & fg.any(), centred, jnp.minimum(random, full - patch))


def sample(key, data: dict, batch: int, patch, oversample: float, cases=None) -> dict:
  """``{"image" [B, *patch, C], "labels" [B, *patch]}`` drawn from the stack ``data``:
  from the cases ``cases [B]`` (indices into the stack), or cases drawn uniformly."""
  size = tuple(int(p) for p in patch)
  patch = jnp.asarray(size, jnp.int32)
  n_fg = int(round(batch * oversample))
  foreground = jnp.arange(batch) >= batch - n_fg
  k_case, k_pos = jax.random.split(key)
  if cases is None:
    cases = jax.random.randint(k_case, (batch,), 0, data["labels"].shape[0])

  def one(key, case, fg):
    lab = data["labels"][case]
    start = _start(key, lab, data["shapes"][case], patch, fg)
    image = jax.lax.dynamic_slice(
      data["images"][case], (*start, 0), (*size, data["images"].shape[-1])
    )
    return image, jax.lax.dynamic_slice(lab, tuple(start), size)

  images, labels = jax.vmap(one)(jax.random.split(k_pos, batch), cases, foreground)
  return {"image": images, "labels": labels.astype(jnp.int32)}


def gather(patch, oversample: float):
  """A federated round's ``gather`` on volumes (:class:`jaxseg.fed.backends.Reader`):
  ``{name: case indices [B]}`` of a stack -> a patch of each case, positions keyed by
  ``key`` (one key per participant and step)."""

  def fetch(data: dict, indices: dict, key) -> dict:
    return {
      n: sample(jax.random.fold_in(key, i), data, idx.shape[0], patch, oversample, idx)
      for i, (n, idx) in enumerate(sorted(indices.items()))
    }

  return fetch


def _grid(shape):
  return jnp.stack(jnp.meshgrid(*[jnp.arange(s, dtype=jnp.float32) for s in shape], indexing="ij"))


def _warp(key, image, labels, settings: Augment3d):
  """Affine (rotation about z, scale) plus coarse elastic field, about the centre."""
  k_rot, k_scale, k_field = jax.random.split(key, 3)
  shape = labels.shape
  angle = jax.random.uniform(k_rot, (), minval=-settings.rotation, maxval=settings.rotation)
  scale = jax.random.uniform(k_scale, (), minval=settings.scale[0], maxval=settings.scale[1])
  centre = (jnp.asarray(shape, jnp.float32) - 1) / 2
  grid = _grid(shape) - centre[:, None, None, None]
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  x = (cos * grid[0] - sin * grid[1]) / scale
  y = (sin * grid[0] + cos * grid[1]) / scale
  coords = jnp.stack([x, y, grid[2] / scale]) + centre[:, None, None, None]
  coarse = settings.elastic * jax.random.normal(k_field, (3, 3, 3, 3))
  coords = coords + jax.image.resize(coarse, (3, *shape), "cubic")
  warp = lambda a, order: jax.scipy.ndimage.map_coordinates(
    a, list(coords), order=order, mode="nearest"
  )  # noqa: E731
  image = jnp.stack([warp(image[..., c], 1) for c in range(image.shape[-1])], -1)
  return image, warp(labels.astype(jnp.float32), 0).astype(labels.dtype)


def augment(key, image, labels, settings: Augment3d):
  """One patch ``[X, Y, Z, C]`` / ``[X, Y, Z]`` through the 3-D augmentations."""
  k_flip, k_rot, k_aff, k_warp, k_gray, k_g = jax.random.split(key, 6)
  flips = jax.random.uniform(k_flip, (3,)) < settings.flip
  for axis in settings.flip_axes:
    image = jnp.where(flips[axis], jnp.flip(image, axis), image)
    labels = jnp.where(flips[axis], jnp.flip(labels, axis), labels)
  if settings.rotate90 and image.shape[0] == image.shape[1]:
    turns = jax.random.randint(k_rot, (), 0, 4) * (jax.random.uniform(k_g) < settings.rotate90)
    branches = [
      lambda a, b, k=k: (jnp.rot90(a, k, (0, 1)), jnp.rot90(b, k, (0, 1))) for k in range(4)
    ]
    image, labels = jax.lax.switch(turns, branches, image, labels)
  if settings.affine:
    warped = _warp(k_warp, image, labels, settings)
    apply = jax.random.uniform(k_aff) < settings.affine
    image, labels = (jnp.where(apply, w, o) for w, o in zip(warped, (image, labels), strict=True))
  if settings.gray:
    image = _gray(k_gray, image, settings)
  return image, labels


def _gray(key, image, settings: Augment3d):
  """Gamma (on the min-max range, nnU-Net style), brightness and contrast, each with
  probability ``settings.gray``."""
  k_on, k_b, k_c, k_g = jax.random.split(key, 4)
  on = jax.random.uniform(k_on, (3,)) < settings.gray
  lo, hi = image.min(), image.max()
  span = jnp.maximum(hi - lo, 1e-6)
  g = jnp.exp(jax.random.uniform(k_g, (), minval=-settings.gamma, maxval=settings.gamma))
  image = jnp.where(on[0], ((image - lo) / span) ** g * span + lo, image)
  b = jax.random.uniform(k_b, (), minval=-settings.brightness, maxval=settings.brightness)
  image = jnp.where(on[1], image + b, image)
  c = jax.random.uniform(k_c, (), minval=1 - settings.contrast, maxval=1 + settings.contrast)
  mean = image.mean()
  return jnp.where(on[2], (image - mean) * c + mean, image)


def augment_example(key, example: dict, **settings) -> dict:
  """The ``volume`` augmentation of :mod:`jaxseg.data.augment` (one example; settings
  of :class:`Augment3d`)."""
  image, labels = augment(key, example["image"], example["labels"], Augment3d(**settings))
  return {**example, "image": image, "labels": labels}
