"""SegFormer-B0 on COVID-19 CT lesion slices (the augmentation study's second model).

    jaxseg train --config configs/segformer_covid_ct.py --workdir /tmp/segformer \\
        --config.data.dir=/path/to/covid_ct
    jaxseg eval --workdir /tmp/segformer

Everything but the model is ``configs/unet_covid_ct.py`` (128 px, BCE, Adam 1e-3,
flips and rotations, 600 steps of batch 8), so the two compare at equal training
budget. ``--config.model.kwargs.variant=b1`` or ``b2`` for the larger encoders;
``:smoke`` runs in seconds.

Expect: the augmentation study's SegFormer control F1 0.7448 (BCE, 256 px, 50
epochs; ``../shared/reference/tables.md``); at 64 px and 300 steps we measured test
F1 0.638 (docs/raters-and-synthesis.md, augmentation study at CPU scale).
"""

import ml_collections

from configs import unet_covid_ct


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = unet_covid_ct.get_config(arg)
  config.model = ml_collections.ConfigDict(dict(name="segformer", kwargs=dict(variant="b0")))
  if arg == "smoke":
    config.model.kwargs.update(dims=(8, 16, 20, 32), depths=(1, 1, 1, 1), decoder=8)
  return config
