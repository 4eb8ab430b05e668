"""JPEG "digital weathering" (the augmentation study, SPEC §4), run on the host.

An image is re-compressed ``repeats`` times at each quality of ``qualities`` in turn
(e.g. quality 30 applied 4, 18 or 30 times, or a 30-20-10-5 chain with repeats 1).
It runs in the grain pipeline because JPEG coding is not a JAX operation; grain
seeds the per-record random generator, so it stays reproducible and resumable.
"""

import io

import numpy as np
from PIL import Image


def recompress(image: np.ndarray, qualities, repeats: int = 1) -> np.ndarray:
  """uint8 or [0, 1] float image ``[H, W, C]`` after repeated JPEG coding."""
  is_float = image.dtype != np.uint8
  pixels = np.round(image * 255).astype(np.uint8) if is_float else image
  squeeze = pixels.shape[-1] == 1
  img = Image.fromarray(pixels[..., 0] if squeeze else pixels)
  for quality in qualities:
    for _ in range(repeats):
      buffer = io.BytesIO()
      img.save(buffer, format="JPEG", quality=int(quality))
      img = Image.open(io.BytesIO(buffer.getvalue()))
      img.load()
  out = np.asarray(img)
  out = out[..., None] if squeeze else out
  return out.astype(np.float32) / 255.0 if is_float else out
