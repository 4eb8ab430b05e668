"""U-Net on your own 2-D images: any ``image_folder`` directory, only its path given.

    jaxseg inspect --config configs/unet_folder.py --config.data.dir=/path/to/folder
    jaxseg train --config configs/unet_folder.py --workdir /tmp/my_unet \\
        --config.data.dir=/path/to/folder
    jaxseg eval --workdir /tmp/my_unet

The folder holds ``images/`` and ``masks/`` matched by file stem (or ``train/``,
``validation/``, ``test/`` each with both; docs/data.md). Everything else is
read from the data and printed at the start of the run (and saved in the run's
``config.json``): how mask values map to classes (1-bit, gray, gray RGB, palette or
JPEG masks; :mod:`jaxseg.data.encodings`), the image channels (the count most images
have), the model's input channels and classes, and the image size (the median size,
long side at most 512, a multiple of the U-Net's stride). Any of them can be given
instead, e.g. ``--config.data.kwargs.mask_values='((0, 0), (255, 1))'``,
``--config.data.kwargs.channels=3``, ``--config.data.kwargs.image_size='(256, 256)'``.
A seeded 20% of the images is the test split and 20% of the rest validation, unless
the folder has its own splits. The U-Net of ``configs/unet_synthetic.py`` at widths
16..256, BCE + Dice, flips and rotations, 2,000 steps of batch 8.

Expect: a validation Dice that rises over the first few hundred steps; what it
reaches depends on your data (not measured here on any folder yet). ``:smoke``
(64x64, tiny U-Net, 4 steps) checks that every stage runs on your folder in seconds.
"""

import dataclasses

import ml_collections

from configs import unet_synthetic
from jaxseg.data import image_folder
from jaxseg.errors import UserError


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "smoke"):
    raise UserError(f"configs/unet_folder.py: unknown argument {arg!r}; known: 'smoke'.")
  config = unet_synthetic.get_config()
  config.data.name = "image_folder"
  # Every image_folder setting at its default (defined in jaxseg.data.image_folder).
  # (`auto`: chosen from the data; see the docstring).
  settings = dataclasses.asdict(image_folder.Settings())
  settings["image_size"] = "(64, 64)" if arg == "smoke" else image_folder.AUTO
  config.data.kwargs = ml_collections.ConfigDict(settings)
  config.model.kwargs.widths = (16, 32, 64, 128, 256)
  config.train.update(steps=2000, eval_every=250)
  if arg == "smoke":
    config.model.kwargs.widths = (4, 8)
    config.train.update(batch_size=2, steps=4, eval_every=2, log_every=2)
    config.eval.batch_size = 4
    config.infer.tile = 64
  return config
