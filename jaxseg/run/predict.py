"""``jaxseg predict``: masks and overlays for images of any size, from a run's best
checkpoint (tiled as :mod:`jaxseg.infer` describes; ``config.infer`` sets the tile,
overlap, tile batch and test-time transforms)."""

import functools
import os

import numpy as np
from PIL import Image

from jaxseg import infer
from jaxseg.data import folder
from jaxseg.errors import UserError
from jaxseg.run import evaluation, pictures


def input_files(path: str) -> list[str]:
  if os.path.isdir(path):
    files = list(folder.list_images(path).values())
    if not files:
      raise UserError(f"--input {path!r}: no image files (png, jpg, tif) in the folder.")
    return files
  if not os.path.exists(path):
    raise UserError(f"--input {path!r} does not exist.")
  return [path]


def mask_encoding(data_config, num_classes: int) -> np.ndarray:
  """``class -> pixel value`` of the written masks: the dataset's own encoding where its
  settings give one (``mask_values``, e.g. 0/255 or palette indices; the smallest value
  of a class mapped from several), else 0/255 for binary masks and class ids otherwise."""
  classes = max(num_classes, 2)
  if "mask_values" in data_config.kwargs and not isinstance(data_config.kwargs.mask_values, str):
    values = np.full(classes, -1)
    for value, cls in sorted(data_config.kwargs.mask_values, reverse=True):
      if cls < classes:
        values[cls] = value
    if (values >= 0).all() and values.max() <= 255:
      return values.astype(np.uint8)
  return np.array([0, 255] if classes == 2 else range(classes), np.uint8)


def run(workdir: str, input_path: str, output: str) -> list[str]:
  """Writes ``<stem>_mask.png`` (in :func:`mask_encoding`) and ``<stem>_overlay.png``
  per input image."""
  exp, variables, _ = evaluation.restore(workdir, splits=())
  files = input_files(input_path)
  os.makedirs(output, exist_ok=True)
  interface = exp.model.interface
  predict_fn = functools.partial(exp.tile_fn, variables)
  valid = infer.margin_of(predict_fn, exp.config.infer.tile, interface.in_channels) > 0
  tiling = "overlap-tile" if valid else "sliding window"
  encoding = mask_encoding(exp.config.data, interface.num_classes)
  written = []
  for path in files:
    image = folder.read_image(path, interface.in_channels).astype(np.float32) / 255.0
    prob = evaluation.predict(exp.config.infer, predict_fn, interface, image)
    labels = infer.labels_of(prob)
    stem = os.path.splitext(os.path.basename(path))[0]
    mask_path = os.path.join(output, f"{stem}_mask.png")
    Image.fromarray(encoding[labels]).save(mask_path)
    Image.fromarray(pictures.overlay(image, np.zeros_like(labels), labels)).save(
      os.path.join(output, f"{stem}_overlay.png")
    )
    written.append(mask_path)
    print(f"{path} -> {mask_path} ({image.shape[0]}x{image.shape[1]}, {tiling})")
  return written
