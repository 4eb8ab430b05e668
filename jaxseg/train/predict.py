"""``jaxseg predict``: masks and overlays for images of any size, from a run's best
checkpoint (tiled as :mod:`jaxseg.infer` describes; ``config.infer`` sets the tile,
overlap, tile batch and test-time transforms)."""

import os

import jax
import numpy as np
from PIL import Image

from jaxseg import infer, losses, models
from jaxseg.data import folder
from jaxseg.train import loop, optim, report
from jaxseg.train.checkpoint import Checkpoints


def restore_best(workdir: str):
  """``(config, model, variables)`` of the best checkpoint of ``workdir``."""
  config = loop.load_config(workdir)
  ckpts = Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True)
  step = ckpts.best_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; train first.")
  model = models.get_model(config.model.name, **config.model.kwargs)
  loss_fn = losses.get_loss(config.loss.name, **config.loss.kwargs)
  tx = optim.make(config.optim, loop.training_steps(config))
  init_state, _, method = loop.make_steps(config, model, loss_fn, tx, model.in_channels)
  state, _ = ckpts.restore(step, jax.eval_shape(init_state))
  ckpts.close()
  return config, model, loop.evaluated_variables(state, method)


def input_files(path: str) -> list[str]:
  if os.path.isdir(path):
    files = list(folder.list_images(path).values())
    if not files:
      raise ValueError(f"--input {path!r}: no image files (png, jpg, tif) in the folder.")
    return files
  if not os.path.exists(path):
    raise FileNotFoundError(f"--input {path!r} does not exist.")
  return [path]


def run(workdir: str, input_path: str, output: str) -> list[str]:
  """Writes ``<stem>_mask.png`` and ``<stem>_overlay.png`` per input image."""
  config, model, variables = restore_best(workdir)
  files = input_files(input_path)
  os.makedirs(output, exist_ok=True)
  predict_fn = infer.make_predict_fn(model, variables)
  valid = infer.margin_of(predict_fn, config.infer.tile, model.in_channels) > 0
  written = []
  for path in files:
    image = folder.read_image(path, model.in_channels).astype(np.float32) / 255.0
    prob = infer.predict(
      predict_fn,
      image,
      tile=config.infer.tile,
      valid=valid,
      overlap=config.infer.overlap,
      tile_batch=config.infer.tile_batch,
      tta=tuple(config.infer.tta),
      align=2 ** (len(model.widths) - 1),
    )
    labels = infer.labels_of(prob)
    stem = os.path.splitext(os.path.basename(path))[0]
    scale = 255 if prob.shape[-1] <= 2 else 1  # binary masks as {0, 255}; else class ids
    mask_path = os.path.join(output, f"{stem}_mask.png")
    Image.fromarray(labels * scale).save(mask_path)
    Image.fromarray(report.overlay(image, np.zeros_like(labels), labels)).save(
      os.path.join(output, f"{stem}_overlay.png")
    )
    written.append(mask_path)
    print(
      f"{path} -> {mask_path} ({image.shape[0]}x{image.shape[1]}, "
      f"{'overlap-tile' if valid else 'sliding window'})"
    )
  return written
