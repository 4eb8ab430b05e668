"""3-D U-Net on MSD Task04 hippocampus (MRI; labels anterior, posterior).

    jaxseg train --config configs/unet3d_hippocampus.py --workdir /tmp/unet3d_hippo \\
        --config.data.dir=/path/to/msd_hippocampus
    jaxseg eval --workdir /tmp/unet3d_hippo
    jaxseg predict --workdir /tmp/unet3d_hippo --input case.nii.gz --output /tmp/pred

The folder is in the MSD / nnU-Net raw layout (``imagesTr``, ``labelsTr``,
``dataset.json``); 5 folds by case, fold 0 the test split
(``--config.data.kwargs.fold=k``). Widths 16..128, patch 32x48x32 (the plan's
default would be the median case, 40x56x40), batch 2, 650 steps, left-right flips.

Expect (measured, docs/volumes.md): 26 minutes on 2 CPU cores from preparation to the last
step; test Dice 0.884 anterior, 0.864 posterior (nnU-Net at full scale: about 0.90 /
0.89). ``:smoke`` — 12 cases, tiny, seconds. Settings: configs/volume_common.py.
"""

import ml_collections

from configs.volume_common import volume_config

ARGS = ("smoke",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg is not None and arg not in ARGS:
    raise ValueError(f"configs/unet3d_hippocampus.py: unknown argument {arg!r}; known: {ARGS}.")
  config = hippocampus(volume_config("unet", "msd"))
  if arg == "smoke":
    smoke(config)
  return config


def hippocampus(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.data.kwargs = ml_collections.ConfigDict(
    dict(
      target_spacing=(),
      folds=5,
      fold=0,
      validation_fraction=0.1,
      max_cases=0,
      seed=0,
      unlabeled=True,  # imagesTs/ cases join the unlabeled pool
      sites="",  # a case,site CSV: federated clients by site
    )
  )
  config.volume.update(patch_size=(32, 48, 32), bucket=8)
  # Anterior and posterior lie along y: mirroring y (or z) would swap what the labels
  # name by position. Left-right mirroring only.
  config.augment.volume = ml_collections.ConfigDict(dict(flip_axes=(0,)))
  config.train.update(steps=650, eval_every=130)
  return config


def smoke(config: ml_collections.ConfigDict) -> None:
  config.data.kwargs.max_cases = 12
  config.model.kwargs.widths = (4, 8)
  config.volume.update(patch_size=(16, 16, 16), window_batch=1)
  config.train.update(steps=4, eval_every=2, log_every=2)
