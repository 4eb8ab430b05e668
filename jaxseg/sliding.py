"""Sliding-window inference with Gaussian importance weighting, over volumes (and any
number of spatial axes: 2-D images alike).

A volume ``[X, Y, Z, C]`` is covered by windows of the training patch size with a
stride of ``(1 - overlap) * patch``; each window's class probabilities are weighted by
a Gaussian centred on the window (std ``patch / 8``, as nnU-Net: window borders,
where the network sees least context, count least) and summed; the sum is divided by
the summed weights. Windows are evaluated ``window_batch`` at a time in a
``lax.fori_loop`` that adds each into the output in place, so the working memory is
the output and its weights plus one window batch, however large the volume
(``memory_analysis`` of the compiled function, tested). ``mirror``: the average over
the 8 flips of the three axes (nnU-Net's test-time mirroring).

Volumes are padded to a multiple of ``bucket`` voxels per axis (and at least the
patch) before the compiled function sees them, so cases of similar size share one
executable.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.models.interface import probabilities


def gaussian_weight(patch, sigma_scale: float = 1 / 8) -> np.ndarray:
  """The importance map of a window: a Gaussian, max 1, floored at a small positive
  value so every voxel has weight."""
  axes = [np.arange(p, dtype=np.float64) - (p - 1) / 2 for p in patch]
  d2 = sum(
    (a.reshape([-1 if i == k else 1 for k in range(len(patch))]) / (p * sigma_scale)) ** 2
    for i, (a, p) in enumerate(zip(axes, patch, strict=True))
  )
  weight = np.exp(-0.5 * d2)
  weight /= weight.max()
  return np.maximum(weight, 1e-3).astype(np.float32)


def window_starts(shape, patch, overlap: float) -> np.ndarray:
  """``[n, D]`` window corners covering ``shape`` (each axis: evenly spaced, first at 0,
  last flush with the end, stride at most ``(1 - overlap) * patch``)."""
  per_axis = []
  for size, p in zip(shape, patch, strict=True):
    if size <= p:
      per_axis.append([0])
      continue
    step = max(1, int(p * (1 - overlap)))
    n = int(np.ceil((size - p) / step)) + 1
    per_axis.append(np.round(np.linspace(0, size - p, n)).astype(int).tolist())
  return np.array(list(itertools.product(*per_axis)), np.int32)


def padded_shape(shape, patch, bucket: int) -> tuple:
  return tuple(int(max(p, -(-s // bucket) * bucket)) for s, p in zip(shape, patch, strict=True))


def make_predictor(apply_fn, patch, num_classes: int, window_batch: int, mirror: bool):
  """A jitted ``predict(variables, volume [*S, C], starts [n, D]) -> [*S, K]`` over
  ``D = len(patch)`` spatial axes (3 for volumes; 2 works alike), ``n`` a multiple of
  ``window_batch`` (repeated starts count once: see ``valid``).

  ``apply_fn(variables, x [B, *patch, C]) -> logits``; ``K == 1``: sigmoid; ``mirror``:
  the mean over the ``2^D`` flips of the spatial axes."""
  patch = tuple(int(p) for p in patch)
  weight = jnp.asarray(gaussian_weight(patch))
  axes = tuple(range(1, len(patch) + 1))
  flips = (
    [()]
    if not mirror
    else [a for r in range(len(axes) + 1) for a in itertools.combinations(axes, r)]
  )

  def probs_of(variables, x):
    total = 0.0
    for axes in flips:
      logits = apply_fn(variables, jnp.flip(x, axes) if axes else x)
      p = probabilities(logits)
      total = total + (jnp.flip(p, axes) if axes else p)
    return total / len(flips)

  @jax.jit
  def predict(variables, volume, starts, valid):
    out = jnp.zeros((*volume.shape[:-1], num_classes), jnp.float32)
    norm = jnp.zeros(volume.shape[:-1], jnp.float32)
    channels = volume.shape[-1]

    def body(i, carry):
      out, norm = carry
      batch_starts = jax.lax.dynamic_slice_in_dim(starts, i * window_batch, window_batch)
      batch_valid = jax.lax.dynamic_slice_in_dim(valid, i * window_batch, window_batch)
      windows = jax.vmap(lambda s: jax.lax.dynamic_slice(volume, (*s, 0), (*patch, channels)))(
        batch_starts
      )
      probs = probs_of(variables, windows)
      for j in range(window_batch):  # in place: each window added into the output
        s, w = batch_starts[j], weight * batch_valid[j]
        region = jax.lax.dynamic_slice(out, (*s, 0), (*patch, num_classes))
        out = jax.lax.dynamic_update_slice(out, region + probs[j] * w[..., None], (*s, 0))
        seen = jax.lax.dynamic_slice(norm, tuple(s), patch)
        norm = jax.lax.dynamic_update_slice(norm, seen + w, tuple(s))
      return out, norm

    out, norm = jax.lax.fori_loop(0, starts.shape[0] // window_batch, body, (out, norm))
    return out / jnp.maximum(norm, 1e-8)[..., None]

  return predict


def predict_volume(predict, variables, volume: np.ndarray, patch, overlap, window_batch, bucket):
  """Probabilities ``[*S, K]`` of ``volume`` ``[*S, C]`` (any size) by ``predict``
  (:func:`make_predictor`)."""
  shape = volume.shape[:-1]
  inside = tuple(slice(0, s) for s in shape)
  full = padded_shape(shape, patch, bucket)
  padded = np.zeros((*full, volume.shape[-1]), np.float32)
  padded[inside] = volume
  starts = window_starts(full, patch, overlap)
  n = -(-len(starts) // window_batch) * window_batch
  valid = np.zeros(n, np.float32)
  valid[: len(starts)] = 1.0
  starts = np.concatenate([starts, np.repeat(starts[:1], n - len(starts), 0)])
  probs = predict(variables, jnp.asarray(padded), jnp.asarray(starts), jnp.asarray(valid))
  return np.asarray(probs)[inside]
