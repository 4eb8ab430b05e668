"""3-D U-Net on the built-in ``synthetic_nerve3d`` volumes (generated, no download).

    jaxseg train --config configs/unet3d_synthetic.py --workdir /tmp/unet3d_synthetic
    jaxseg eval --workdir /tmp/unet3d_synthetic

40 cases of 32x32x24 voxels (a winding nerve tube), 5 folds by case (fold 0 the
test split), widths 8..32, patches 32x32x24, 300 steps of batch 2. ``:smoke`` runs
every stage in seconds (tests). Settings: configs/volume_common.py.
"""

import ml_collections

from configs.volume_common import volume_config

ARGS = ("smoke",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg is not None and arg not in ARGS:
    raise ValueError(f"configs/unet3d_synthetic.py: unknown argument {arg!r}; known: {ARGS}.")
  config = volume_config("unet", "synthetic_nerve3d")
  config.model.kwargs.widths = (8, 16, 32)
  config.train.update(steps=300, eval_every=100)
  if arg == "smoke":
    config.data.kwargs = ml_collections.ConfigDict(dict(shape=(8, 8, 8), num_cases=10))
    config.model.kwargs.widths = (4, 8)
    config.volume.update(patch_size=(8, 8, 8), window_batch=1)
    config.train.update(steps=6, eval_every=3, log_every=3)
  return config
