"""3-D U-Net++ (deep supervision) on MSD Task04 hippocampus.

    jaxseg train --config configs/unetpp3d_hippocampus.py --workdir /tmp/unetpp3d_hippo \\
        --config.data.dir=/path/to/msd_hippocampus
    jaxseg eval --workdir /tmp/unetpp3d_hippo

As ``configs/unet3d_hippocampus.py`` with U-Net++ (``mode=deep``: every head trained,
their average evaluated), 400 steps (its step costs about 1.8x U-Net's, so the run
fits the same 30 minutes on 2 CPU cores). ``:smoke`` runs in seconds.
"""

import ml_collections

from configs.unet3d_hippocampus import ARGS, hippocampus, smoke
from configs.volume_common import volume_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg is not None and arg not in ARGS:
    raise ValueError(f"configs/unetpp3d_hippocampus.py: unknown argument {arg!r}; known: {ARGS}.")
  config = hippocampus(volume_config("unetpp", "msd"))
  config.model.kwargs.mode = "deep"
  config.train.update(steps=400, eval_every=100)  # ~1.8x U-Net's cost per step
  if arg == "smoke":
    smoke(config)
  return config
